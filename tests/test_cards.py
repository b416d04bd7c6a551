"""Model and corpus cards that carry the lineage and the benchmark overlap, and mteb metadata derived from the text:
a corpus whose STS source holds two pairs of an MTEB task's test set (a pack named after STSBenchmark), flagged or
dropped, trained for a few MiniLM steps."""
import json

import pytest

from datakit.card import overlap
from datakit.manifest import read_manifest
from datakit.engines.packs import build_pack, texts_from_files
from datakit.pipeline import build
from datakit.recipe import load_recipe
from tests.conftest import ROOT, write

DATA = ROOT / "recipes" / "data"
RECIPE = """
name: cards
allow_paths: [{data}]
sources:
  - {{name: sts, path: {data}/sts.csv, adapter: sts, instruction: "Retrieve semantically similar text"}}
  - {{name: faq, path: {data}/faq.csv, adapter: qa, columns: {{query: question, positive: answer}},
      instruction: "Given a question, retrieve the answer"}}
  - {{name: intents, path: {data}/intents.parquet, adapter: classification, columns: {{label: intent}},
      mteb_task: Banking77Classification}}
steps: [{{type: decontaminate, packs: [pack], action: {action}}}]
"""
TRAIN = """
model: {{name_or_path: embedded-minilm}}
data: {{shards: {shards}, batch_size: 4, pair_batch_size: 4, negatives: 1, query_max_length: 32, doc_max_length: 48}}
output_dir: {out}
stages: [{{steps: 1, lr: 3.0e-5, warmup_steps: 0}}, {{steps: 1, lr: 3.0e-5, warmup_steps: 0}}]
eval: {{tasks: {tasks}, at_start: false}}
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """For action flag and drop: the corpus folder and the exported model folder."""
    from trainer.config import load_config
    from trainer.train import train

    base = tmp_path_factory.mktemp("cards")
    pairs = [line.split(",") for line in (DATA / "sts.csv").read_text().splitlines()[1:3]]
    write(base / "bench" / "STSBenchmark.test.tsv", "".join(f"{a}\t{b}\t{s}\n" for a, b, s in pairs))
    build_pack(texts_from_files([base / "bench" / "STSBenchmark.test.tsv"]), base / "pack")
    tasks = write(base / "tasks.yaml", f"allow_paths: [{DATA}]\ntasks:\n  - {{name: STSBenchmark, type: sts, "
                                       f"path: {DATA / 'eval' / 'sts.tsv'}}}\n")
    out = {}
    for action in ("flag", "drop"):
        recipe = write(base / f"{action}.yaml", RECIPE.format(data=DATA, action=action))
        build(load_recipe(recipe), base / f"corpus-{action}")
        cfg = write(base / f"train-{action}.yaml", TRAIN.format(shards=base / f"corpus-{action}",
                                                                out=base / f"run-{action}", tasks=tasks))
        model = train(load_config(cfg), log=lambda _: None)
        out[action] = (base / f"corpus-{action}", model)
    return out


def test_the_card_overlap_equals_the_contamination_report(runs):
    corpus, model = runs["flag"]
    report = json.loads((corpus / "contamination.json").read_text())
    rows = {r.benchmark: r for r in overlap(read_manifest(corpus))}
    assert {k: r.records for k, r in rows.items() if r.records} == {k: v["records"] for k, v in report["tasks"].items()}
    # two test pairs, each in both orders: 4 training records, all by exact match, of the pack's 4 test texts
    assert rows["pack/STSBenchmark/test"].records == 4 and rows["pack/STSBenchmark/test"].test_texts == 4
    assert rows["pack/STSBenchmark/test"].mteb is True and rows["pack/STSBenchmark/test"].action == "flag"
    card = (model / "README.md").read_text()
    assert "| STSBenchmark | test | yes | 4 | 4 | 4 | 0 | 0 | flagged, kept |" in card
    assert "| STSBenchmark | in_corpus | 4 |" in card and "| Banking77Classification | declared |" in card


def test_model_meta_loads_in_mteb_and_zero_shot_follows_what_the_corpus_kept(runs):
    from mteb.models.model_meta import ModelMeta

    flagged = ModelMeta.model_validate_json_resolved((runs["flag"][1] / "model_meta.json").read_text())
    dropped = ModelMeta.model_validate_json_resolved((runs["drop"][1] / "model_meta.json").read_text())
    assert flagged.is_zero_shot_on(["STSBenchmark"]) is False  # its test pairs stayed in training
    assert dropped.is_zero_shot_on(["STSBenchmark"]) is True
    for meta in (flagged, dropped):  # a source declared as Banking77's data: never zero-shot on it
        assert meta.is_zero_shot_on(["Banking77Classification"]) is False
        assert meta.adapted_from == "sentence-transformers/all-MiniLM-L6-v2" and meta.embed_dim == 384
    why = json.loads((runs["flag"][1] / "training_datasets.json").read_text())
    assert why["STSBenchmark"] == {"from": ["in_corpus"], "records": 4}
    assert why["Banking77Classification"]["from"] == ["declared"]
    assert "STSBenchmark" not in json.loads((runs["drop"][1] / "training_datasets.json").read_text())


def test_eval_results_carry_the_model_meta_and_mark_scores_that_are_not_zero_shot(runs, tmp_path):
    from trainer.eval import EvalRequest, evaluate_models

    model = runs["flag"][1]
    [summary] = evaluate_models(EvalRequest(models=[str(model)], out=str(tmp_path / "eval"),
                                            tasks_file=str(model.parents[1] / "tasks.yaml")), log=lambda _: None)
    [meta_path] = (tmp_path / "eval" / "results").glob("*/*/model_meta.json")
    assert "STSBenchmark" in json.loads(meta_path.read_text())["training_datasets"]
    assert "| STSBenchmark † |" in summary.markdown and "Zero-shot on 0% of these tasks" in summary.markdown


def test_both_cards_parse_with_huggingface_hub_offline(runs):
    from huggingface_hub import DatasetCard, ModelCard

    corpus, model = runs["flag"]
    card = ModelCard.load(model / "README.md")
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2" and card.data.library_name
    assert [(r.dataset_name, r.metric_type) for r in card.data.eval_results] == [("STSBenchmark", "cosine_spearman")]
    dcard = DatasetCard.load(corpus / "README.md")
    assert {c["config_name"] for c in dcard.data.configs} == {"retrieval", "pair", "classification", "quarantine"}


def test_load_dataset_reads_every_kind_with_the_manifest_counts(runs):
    import datasets

    corpus, _ = runs["drop"]
    manifest = read_manifest(corpus)
    for kind, per in manifest["counts"].items():
        assert datasets.load_dataset(str(corpus), kind, split="train").num_rows == sum(per.values())


def test_a_corpus_never_checked_says_so(tmp_path):
    recipe = write(tmp_path / "r.yaml", f"name: plain\nallow_paths: [{DATA}]\n"
                                        f"sources: [{{name: faq, path: {DATA}/faq.csv, adapter: qa, "
                                        "columns: {query: question, positive: answer}}]\n")
    build(load_recipe(recipe), tmp_path / "out")
    assert "Not audited against any benchmark" in (tmp_path / "out" / "README.md").read_text()
    assert overlap(read_manifest(tmp_path / "out")) is None


def test_decontaminate_and_dedup_outputs_get_their_own_card(runs, tmp_path):
    from datakit.pipeline import apply_steps

    corpus, _ = runs["drop"]
    pack = corpus.parent / "pack"
    apply_steps(corpus, tmp_path / "clean", [{"type": "decontaminate", "packs": [str(pack)], "action": "flag"}])
    card = (tmp_path / "clean" / "README.md").read_text()
    assert "Benchmark overlap" in card and "| STSBenchmark | test | yes | 4 |" in card
    assert "## Sources" in card and "sts.csv" in card  # the input's lineage, through its manifest
