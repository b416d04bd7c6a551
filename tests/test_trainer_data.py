from collections import Counter

import pytest

from datakit.pipeline import build
from datakit.recipe import load_recipe
from trainer.data import BatchSampler, DataConfig, open_shards
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "demo"
    recipe = load_recipe(ROOT / "recipes" / "demo.yaml")
    recipe.recipe.steps = [s for s in recipe.recipe.steps if s.type != "mine_negatives"]  # fast: no model
    build(recipe, out)
    return out


def test_every_batch_comes_from_one_dataset_and_stage_one_is_retrieval_only(shards):
    tables = open_shards(shards)
    s1 = BatchSampler(tables, DataConfig(shards=str(shards), batch_size=4), stage=1)
    for _ in range(50):
        b = next(s1)
        assert b.kind == "retrieval" and len(b.queries) == len(b.docs) == 4
        t = tables["retrieval"].to_pylist()
        ids = {r["positive"] for r in t if r["dataset"] == b.dataset}
        assert set(b.docs) <= ids and all(len(n) == 4 for n in b.negatives)
    s2 = BatchSampler(tables, DataConfig(shards=str(shards), batch_size=4), stage=2)
    kinds = Counter(next(s2).kind for _ in range(60))
    assert set(kinds) == {"retrieval", "pair", "classification"}


def test_eta_share_over_many_batches(shards):
    tables = open_shards(shards)
    for eta in (0.72, 0.5):
        s = BatchSampler(tables, DataConfig(shards=str(shards), batch_size=2, eta=eta), stage=2)
        plans = [s.plan(step)[0] for step in range(5000)]
        assert abs(plans.count("retrieval") / 5000 - eta) < 0.02


def test_batches_are_deterministic_and_resume_exactly(shards):
    tables = open_shards(shards)
    cfg = DataConfig(shards=str(shards), batch_size=3, seed=5)
    a = BatchSampler(tables, cfg, stage=2)
    first = [next(a) for _ in range(20)]
    b = BatchSampler(tables, cfg, stage=2)
    assert [x.queries for x in (next(b) for _ in range(20))] == [x.queries for x in first]
    state = a.state_dict()
    cont = [next(a) for _ in range(10)]
    c = BatchSampler(tables, cfg, stage=2)
    c.load_state_dict(state)
    assert [(x.dataset, x.queries, x.docs, x.negatives) for x in (next(c) for _ in range(10))] == \
        [(x.dataset, x.queries, x.docs, x.negatives) for x in cont]


def test_classification_batches_pair_same_label_and_negatives_of_other_labels(shards):
    tables = open_shards(shards)
    s = BatchSampler(tables, DataConfig(shards=str(shards), batch_size=4, eta=0.0), stage=2)
    seen = 0
    for _ in range(40):
        b = next(s)
        if b.kind != "classification":
            continue
        seen += 1
        for lab, negl in zip(b.labels, b.negative_labels):
            assert lab not in negl
        assert all(q != d for q, d in zip(b.queries, b.docs))
    assert seen > 5


@pytest.mark.parametrize("stage", [1, 2])
def test_two_processes_split_one_global_batch(shards, stage):
    """Every field, random fills and drawn classification pairs included: the global batch does not depend on
    the number of processes (the demo corpus without mining is short of hard negatives everywhere)."""
    tables = open_shards(shards)
    cfg = DataConfig(shards=str(shards), batch_size=2, pair_batch_size=2, negatives=2)
    one = BatchSampler(tables, DataConfig(shards=str(shards), batch_size=4, pair_batch_size=4, negatives=2), stage=stage)
    r0, r1 = (BatchSampler(tables, cfg, stage=stage, world_size=2, rank=r) for r in (0, 1))
    kinds = set()
    for _ in range(30):
        g, a, b = next(one), next(r0), next(r1)
        assert g.dataset == a.dataset == b.dataset
        for name in ("queries", "docs", "negatives", "scores", "labels", "negative_labels"):
            assert getattr(a, name) + getattr(b, name) == getattr(g, name), name
        kinds.add(g.kind)
    assert kinds == ({"retrieval"} if stage == 1 else {"retrieval", "pair", "classification"})


def _nq_style(tmp_path):
    """One record per answer: each question appears with 3 answers (NQ-style data)."""
    import json

    from tests.conftest import build_yaml, write

    rows = [{"query": f"question {q}", "pos": [f"answer {q}-{a} with some words" for a in range(3)]} for q in range(40)]
    write(tmp_path / "nq.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return build_yaml(tmp_path, "name: nq\nsources: [{name: nq, path: nq.jsonl, adapter: retrieval, "
                                "columns: {positive: pos}, instruction: Find the answer}]\n").out_dir


def test_a_batch_never_holds_two_records_of_one_query_and_fills_negatives_with_other_positives(tmp_path):
    out = _nq_style(tmp_path)
    tables = open_shards(out)
    assert tables["retrieval"].num_rows == 120
    s = BatchSampler(tables, DataConfig(shards=str(out), batch_size=8, negatives=2, group_batches=4), stage=1)
    for _ in range(60):
        b = next(s)
        assert len(set(b.queries)) == len(b.queries) == 8  # no record is another's false negative
        for doc, negs in zip(b.docs, b.negatives):
            assert doc not in negs  # a filled negative is never the record's own positive


def test_stage_two_draws_a_new_order(shards):
    tables = open_shards(shards)
    cfg = DataConfig(shards=str(shards), batch_size=4, eta=1.0)
    s1, s2 = BatchSampler(tables, cfg, stage=1), BatchSampler(tables, cfg, stage=2)
    first = [tuple(next(s1).queries) for _ in range(8)]
    second = [tuple(next(s2).queries) for _ in range(8)]
    assert first != second


def test_exported_prompts_are_each_datasets_most_common_instruction_for_every_kind():
    """Tables given directly (a dataset whose records carry two instructions, as synthesis steps can make)."""
    import pyarrow as pa

    from trainer.export import prompts_from_tables

    tables = {
        "retrieval": pa.table({"dataset": ["a"] * 4 + ["b"] * 5, "instruction": ["rare", "Find", "Find", "Find"]
                               + ["Other"] * 5}),
        "pair": pa.table({"dataset": ["s"] * 2, "instruction": ["Similar", "Similar"]}),
        "classification": pa.table({"dataset": ["c"] * 3, "instruction": ["", "Classify", "Classify"]}),
    }
    t = "Instruct: {instruction}\nQuery: "
    assert prompts_from_tables(tables, t) == {"a": t.format(instruction="Find"), "b": t.format(instruction="Other"),
                                              "s": t.format(instruction="Similar"),
                                              "c": t.format(instruction="Classify"),
                                              "query": t.format(instruction="Other")}
