"""Issue #44: a user's own documents -> passages -> generated queries kept only when they find their passage, an
evaluation split that never trains, and the rest of the chain on the result."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest

from datakit.manifest import read_manifest, read_shards
from datakit.recipe import RecipeError, load_recipe
from tests.conftest import FakeTransport, build_yaml, write

BEES = ("Bees collect nectar from flowers and store it in their honey stomach. Back in the hive, house bees fan "
        "their wings to evaporate the water until the nectar thickens into honey. ")
PASSWORD = ("To reset your password, open Settings, choose Security and press Reset password. A link is sent to the "
            "e-mail address on your account, valid for one hour. ")
VOLCANO = ("A volcano erupts when magma rises through the crust. Gas dissolved in the magma expands as the pressure "
           "drops, and the eruption throws out ash, lava and rock. ")
TRAINS = ("High-speed trains run on dedicated tracks with gentle curves. Overhead lines feed their electric motors, "
          "and signals are shown in the driver's cab rather than beside the track. ")


def _docs(tmp_path, rows):
    write(tmp_path / "docs.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def test_documents_become_passages_with_their_document_and_position(tmp_path):
    long = " ".join(f"w{i}" for i in range(450))
    _docs(tmp_path, [{"id": 7, "title": "Words", "text": long}, {"id": "tiny", "text": "too short"},
                     {"id": 8, "text": None}, {"text": (BEES + PASSWORD) * 3}, {"id": 9, "text": "  "}])
    res = build_yaml(tmp_path, "name: d\nsources: [{name: docs, path: docs.jsonl, adapter: documents, "
                     "max_quarantine: 1.0, options: {chunk: {by: words, size: 200, overlap: 20, min_length: 20}}}]\n")
    p = read_shards(res.out_dir, "passage").to_pylist()
    by_doc = {}
    for r in p:
        by_doc.setdefault(r["doc_id"], []).append(r)
    words = by_doc["7"]
    assert [r["chunk"] for r in words] == [0, 1, 2] and all(r["title"] == "Words" for r in words)
    assert words[0]["text"].split()[-20:] == words[1]["text"].split()[:20]  # 20 words of overlap
    assert " ".join(r["text"] for r in words).split()[-1] == "w449"  # nothing lost at the end
    assert words[1]["lineage"]["events"][0]["detail"].startswith("doc=7 chunk=1/3 chars=")
    assert "docs:3" in by_doc and len(by_doc["docs:3"]) == 1  # no id column value: dataset:row
    q = {(r["row"], r["reason"]) for r in read_shards(res.out_dir, "quarantine").to_pylist()}
    assert q == {(1, "too_short"), (2, "missing_field"), (4, "empty_text")}


@pytest.mark.parametrize("by, size, overlap", [("sentences", 2, 1), ("tokens", 40, 8)])
def test_chunking_by_sentences_and_by_the_embedders_tokens(tmp_path, by, size, overlap):
    text = BEES + PASSWORD + VOLCANO + TRAINS
    _docs(tmp_path, [{"id": "a", "text": text}])
    res = build_yaml(tmp_path, f"name: d\nsources: [{{name: docs, path: docs.jsonl, adapter: documents, "
                     f"options: {{chunk: {{by: {by}, size: {size}, overlap: {overlap}, min_length: 2}}}}}}]\n")
    parts = read_shards(res.out_dir, "passage").column("text").to_pylist()
    assert len(parts) >= 3 and parts[0].startswith("Bees collect") and parts[-1].rstrip().endswith("track.")
    if by == "tokens":
        from transformers import AutoTokenizer

        from embedkit.models import resolve_name

        tok = AutoTokenizer.from_pretrained(resolve_name("embedded-minilm")[0])
        assert all(len(tok(p, add_special_tokens=False)["input_ids"]) <= size + 2 for p in parts[:-1])


def test_a_chunk_larger_than_the_embedder_reads_is_an_error_at_validate(tmp_path):
    _docs(tmp_path, [{"text": BEES}])
    path = write(tmp_path / "r.yaml", "name: d\nsources: [{name: docs, path: docs.jsonl, adapter: documents, "
                 "options: {chunk: {by: tokens, size: 400}}}]\nsteps: [{type: generate_queries}]\n")
    with pytest.raises(RecipeError, match=r"sources\[0\].options.chunk.size: 400 tokens is more than "
                                          r"steps\[0\].generate_queries.encoder .* 256 tokens"):
        load_recipe(path)


def _step(tmp_path, answers, **config):
    from datakit.llm.cache import LLMCache
    from datakit.llm.client import Budget, LLMClient
    from datakit.sources import Sandbox
    from datakit.steps import StepContext, make_step, step_config

    ctx = StepContext(sandbox=Sandbox.of(tmp_path), out_dir=tmp_path, work_dir=tmp_path / "w",
                      artifacts_dir=tmp_path / "a", budget=Budget())
    step = make_step(step_config({"type": "generate_queries", **config}), ctx)
    step._client = LLMClient("openai/x", LLMCache(tmp_path / "c.db"), transport=FakeTransport(answers), concurrency=1)
    return step


def _passages(texts, docs=None):
    from datakit.records import LINEAGE, PASSAGE, conform

    n = len(texts)
    return PASSAGE, conform(PASSAGE, pa.table({
        "id": [f"p:{i}:c0" for i in range(n)], "dataset": ["p"] * n, "instruction": ["Find the passage"] * n,
        "text": texts, "title": [""] * n, "doc_id": docs or [f"d{i}" for i in range(n)], "chunk": [0] * n,
        "lineage": pa.array([{"source": "p", "file": "f", "row": i, "parent_id": "", "events": []} for i in range(n)],
                            LINEAGE)}))


def test_round_trip_keeps_a_query_only_when_it_finds_its_own_passage(tmp_path):
    """The scripted transport (conftest, named so) stands in for the writer so that which query is on topic is
    known; the filter itself is real (MiniLM, exact search)."""
    texts = [BEES, PASSWORD, VOLCANO, TRAINS]
    answers = ["How do bees make honey from nectar?",  # its passage: kept
               "How does a volcano erupt?",  # written for the password passage, finds the volcano one: dropped
               "Sure! Here is a question: what is magma?",  # boilerplate: dropped before the round trip
               "How are high-speed trains powered?"]  # kept
    step = _step(tmp_path, answers, k=1, max_failed=1.0)
    out = list(step.run(iter([_passages(texts)])))
    kinds = [k for k, _ in out]
    assert kinds == ["retrieval", "passage"]
    records = out[0][1].to_pylist()
    assert [(r["query"], r["positive"]) for r in records] == [(answers[0], BEES), (answers[3], TRAINS)]
    assert records[0]["lineage"]["parent_id"] == "p:0:c0" and records[0]["id"] == "p:0:c0:q.question.0"
    event = records[0]["lineage"]["events"][-1]
    assert event["step"] == "generate_queries" and event["prompt_id"] == "query_question@1"
    report = step.report()
    assert report["round_trip"] == {"k": 1, "filtered": 3, "kept": 2, "keep_rate": 0.6667,
                                     "ranks": {"1": 2, "miss": 1}}
    assert step.out["boilerplate"] == 1 and step.out["round_trip_miss"] == 1


def test_held_out_documents_never_train_and_make_a_task_trainer_eval_reads(tmp_path):
    from trainer.eval.run import local_tasks
    from trainer.eval.taskfile import load_task_file

    texts = [BEES, PASSWORD, VOLCANO, TRAINS] * 3
    docs = [f"doc{i % 6}" for i in range(12)]  # two passages per document
    answers = ["How do bees make honey from nectar?", "How can I reset my password?",
               "Why does a volcano erupt?", "How are high-speed trains powered?"] * 3
    step = _step(tmp_path, answers, k=3, holdout=0.5, max_failed=1.0)
    out = list(step.run(iter([_passages(texts, docs)])))
    train = out[0][1].to_pylist()
    trained_docs = {docs[int(r["lineage"]["parent_id"].split(":")[1])] for r in train}
    report = step.report()["heldout"]
    assert report["documents"] >= 1 and report["queries"] >= 1
    folder = tmp_path / "a" / "heldout"
    queries = [json.loads(line) for line in open(folder / "queries.jsonl")]
    qrels = (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]
    held_passages = {line.split("\t")[1] for line in qrels}
    held = {docs[int(p.split(":")[1])] for p in held_passages}
    assert held and not held & trained_docs  # by document: no passage of a held-out document trains
    assert len(queries) == report["queries"] == len(qrels)
    assert sum(1 for _ in open(folder / "corpus.jsonl")) == len(texts)  # every passage is the corpus
    task_file = load_task_file(folder / "tasks.yaml")
    [task] = local_tasks(task_file)
    assert task_file.tasks[0].instruction == "Find the passage" and task.metadata.type == "Retrieval"


def test_a_writer_that_refuses_every_passage_fails_the_build(tmp_path):
    step = _step(tmp_path, ["I'm sorry, I cannot help with that."] * 4)
    list(step.run(iter([_passages([BEES, PASSWORD, VOLCANO, TRAINS])])))
    from datakit.steps import StepFailed

    with pytest.raises(StepFailed, match=r"4 of 4 requests .* failed: bad_output x4"):
        step.check("step 0:generate_queries")


def test_documents_to_a_trained_corpus_with_the_embedded_model(tmp_path):
    """The whole chain on real text with the real embedded LLM (SmolLM2-135M): documents, generated queries,
    the round trip, dedup, mining over the passages, and the held-out task; then `trainer inspect` reads it."""
    rows = [{"id": f"d{i}", "title": t.split(".")[0], "text": t * 2} for i, t in
            enumerate([BEES, PASSWORD, VOLCANO, TRAINS])]
    _docs(tmp_path, rows)
    res = build_yaml(tmp_path, """
name: docs
sources: [{name: docs, path: docs.jsonl, adapter: documents, instruction: "Given a question, find the passage",
           options: {chunk: {by: sentences, size: 2, overlap: 0, min_length: 1}}}]
steps:
  - {type: generate_queries, styles: [question, keywords], k: 3, holdout: 0.25, max_tokens: 32, max_failed: 1.0}
  - {type: dedup}
  - {type: mine_negatives, negatives: 1, skip: 1, depth: 10}
""")
    m = read_manifest(res.out_dir)
    entry = m["synthesis"]["generate_queries"]
    assert entry["round_trip"]["filtered"] > 0 and entry["calls"] + entry["cache_hits"] > 0
    assert m["counts"]["passage"]["docs"] == sum(m["counts"]["passage"].values()) >= 8
    retrieval = read_shards(res.out_dir, "retrieval")
    assert set(retrieval.column("positive").to_pylist()) <= set(read_shards(res.out_dir, "passage").column("text")
                                                                .to_pylist())
    assert (res.out_dir / "heldout" / "tasks.yaml").exists() and "held out" in (res.out_dir / "README.md").read_text()


def test_the_domain_recipe_runs_against_a_real_openai_compatible_server(llm_server, shared_data, tmp_path,
                                                                         monkeypatch):
    """recipes/domain/recipe.yaml as a user with a real LLM runs it: `llm:` pointed at an OpenAI-compatible server
    (conftest's: SmolLM2 behind HTTP, its key from the environment, the address allowed), on SciFact's first 24
    abstracts; every step as shipped (claims, the round trip, the held-out split, decontamination against
    SciFact's test claims, mining)."""
    import yaml

    from datakit.pipeline import build
    from tests.conftest import LLM_SERVER_KEY, ROOT

    monkeypatch.setenv("OPENAI_API_KEY", LLM_SERVER_KEY)
    monkeypatch.setenv("DATAKIT_ALLOW_API_BASE", llm_server)
    for name in ("recipe.yaml", "bench-scifact.yaml"):  # the shipped files, their data paths made absolute
        write(tmp_path / name, (ROOT / "recipes" / "domain" / name).read_text()
              .replace("../../../shared/data", str(shared_data)))
    recipe = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    source = recipe["sources"][0]
    source["sql"] = source["sql"].rstrip() + "\nORDER BY id LIMIT 24\n"
    recipe["steps"][0]["fraction"] = 1.0
    recipe["llm"] = {"model": "openai/smollm2", "api_base": llm_server, "cache": "answers.sqlite"}
    write(tmp_path / "recipe.yaml", yaml.safe_dump(recipe, sort_keys=False))
    res = build(load_recipe(tmp_path / "recipe.yaml"), tmp_path / "out")
    m = read_manifest(res.out_dir)
    entry = m["synthesis"]["generate_queries"]
    assert entry["endpoint"].startswith("http://127.0.0.1:") and entry["credentials"] == "environment"
    assert entry["calls"] >= 24 and entry["completion_tokens"] > 0  # a claim per abstract (retries on top), by HTTP
    trip = entry["round_trip"]
    assert 0 < trip["kept"] <= trip["filtered"] <= 24, trip
    retrieval = read_shards(res.out_dir, "retrieval")
    assert len(retrieval) == sum(m["counts"]["retrieval"].values()) > 0
    abstracts = set(read_shards(res.out_dir, "passage").column("text").to_pylist())
    assert set(retrieval.column("positive").to_pylist()) <= abstracts
    assert (res.out_dir / "heldout" / "tasks.yaml").exists()
    assert LLM_SERVER_KEY not in (res.out_dir / "manifest.json").read_text()
