import json

import pyarrow as pa
import pytest

from datakit.adapters import make_adapter
from datakit.recipe import SourceConfig
from datakit.manifest import read_shards
from datakit.sources import Chunk, Sandbox
from datakit.reading import DataError
from tests.conftest import build_yaml, write


def _build(tmp_path, adapter, rows, columns=None, options=None, instruction=""):
    """Build a one-source recipe over `rows` (JSONL) and return {kind: rows} plus the quarantine."""
    write(tmp_path / "in.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    recipe = {"name": "t", "sources": [{"name": "src", "path": "in.jsonl", "adapter": adapter,
                                        "columns": columns or {}, "options": options or {},
                                        "instruction": instruction}]}
    result = build_yaml(tmp_path, json.dumps(recipe))  # JSON is YAML
    out = {k: read_shards(result.out_dir, k).to_pylist() for k in ("retrieval", "pair", "classification")}
    return out, read_shards(result.out_dir, "quarantine").to_pylist()


def test_title_body(tmp_path):
    out, bad = _build(tmp_path, "title_body", [{"title": "T", "body": "B"}, {"title": "T2", "body": None}],
                      instruction="Given a title, retrieve the article")
    [rec] = out["retrieval"]
    assert (rec["query"], rec["positive"], rec["negatives"], rec["instruction"]) == (
        "T", "B", [], "Given a title, retrieve the article")
    assert rec["id"] == "src:0" and rec["dataset"] == "src"
    assert rec["lineage"]["file"] == "in.jsonl" and rec["lineage"]["events"][0]["step"] == "adapter:title_body"
    assert [(q["row"], q["field"], q["reason"]) for q in bad] == [(1, "body", "missing_field")]


def test_qa_flat_columns_and_chat_turns(tmp_path):
    out, _ = _build(tmp_path, "qa", [{"q": "How?", "a": "Like this."}], columns={"query": "q", "positive": "a"})
    assert [(r["query"], r["positive"]) for r in out["retrieval"]] == [("How?", "Like this.")]
    rows = [
        {"conv": [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
                  {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}]},
        {"conv": [{"from": "human", "value": "H"}, {"from": "gpt", "value": "G"}]},
        {"conv": [{"role": "assistant", "content": "no user turn"}]},
    ]
    out, bad = _build(tmp_path, "qa", rows, columns={"messages": "conv"})
    assert [(r["query"], r["positive"]) for r in out["retrieval"]] == [("U1", "A1"), ("H", "G")]
    assert [(q["row"], q["field"], q["reason"]) for q in bad] == [(2, "conv", "missing_field")]


def test_reading_comprehension_builds_query_from_context_instruction_question(tmp_path):
    rows = [{"context": "Paris is in France.", "question": "Where is Paris?", "answer": "In France."}]
    out, _ = _build(tmp_path, "reading_comprehension", rows)
    [rec] = out["retrieval"]
    assert rec["query"].startswith("Paris is in France.") and rec["query"].endswith("Where is Paris?")
    assert "Answer the question" in rec["query"] and rec["positive"] == "In France."
    out, _ = _build(tmp_path, "reading_comprehension", rows, options={"template": "Q: {question} C: {context}"})
    assert out["retrieval"][0]["query"] == "Q: Where is Paris? C: Paris is in France."


def test_retrieval_lists_of_positives_and_given_negatives(tmp_path):
    rows = [
        {"query": "q0", "pos": ["p0a", "p0b"], "neg": ["n0"]},
        {"query": "q1", "pos": "p1", "neg": '["n1a", "n1b"]'},
        {"query": "q2", "pos": ["p2"]},
        {"query": "q3", "pos": ["p3"], "neg": [""]},
    ]
    out, bad = _build(tmp_path, "retrieval", [rows[0], rows[2], rows[3]], columns={"positive": "pos", "negatives": "neg"})
    recs = out["retrieval"]
    assert [(r["id"], r["positive"], r["negatives"], r["negative_origins"]) for r in recs] == [
        ("src:0:p0", "p0a", ["n0"], ["given"]), ("src:0:p1", "p0b", ["n0"], ["given"]), ("src:1", "p2", [], [])]
    assert [(q["row"], q["field"], q["reason"]) for q in bad] == [(2, "neg", "empty_text")]
    out, _ = _build(tmp_path, "retrieval", [rows[1]], columns={"positive": "pos", "negatives": "neg"})
    assert out["retrieval"][0]["negatives"] == ["n1a", "n1b"]


def test_a_text_that_starts_with_a_bracket_is_a_text_not_a_broken_list(tmp_path):
    """Found on 1M spliced real sentences: "[Ticker] Fitch upgrades ..." as a positive was quarantined as a
    list that did not parse. Only a JSON array is decoded; a JSON array of non-strings is still quarantined."""
    rows = [{"query": "q0", "pos": "[Ticker] Fitch upgrades two senators.", "neg": "[1] Smith et al., 2020"},
            {"query": "q1", "pos": "p1", "neg": '[1, 2]'}]
    out, bad = _build(tmp_path, "retrieval", rows, columns={"positive": "pos", "negatives": "neg"})
    assert [(r["positive"], r["negatives"]) for r in out["retrieval"]] == [
        ("[Ticker] Fitch upgrades two senators.", ["[1] Smith et al., 2020"])]
    assert [(q["row"], q["field"], q["reason"]) for q in bad] == [(1, "neg", "wrong_type")]


def test_nli_scores_both_orders_label_map_and_unknown_labels(tmp_path):
    rows = [{"premise": "P", "hypothesis": "H1", "label": "entailment"},
            {"premise": "P", "hypothesis": "H2", "label": "Neutral"},
            {"premise": "P", "hypothesis": "H3", "label": "contradiction"},
            {"premise": "P", "hypothesis": "H4", "label": "-"}]
    out, bad = _build(tmp_path, "nli", rows)
    pairs = [(r["text_a"], r["text_b"], r["score"], r["label"]) for r in out["pair"]]
    assert ("P", "H1", 2.0, "entailment") in pairs and ("H1", "P", 2.0, "entailment") in pairs
    assert ("P", "H2", 1.0, "Neutral") in pairs and ("P", "H3", 0.0, "contradiction") in pairs
    assert len(pairs) == 6 and out["retrieval"] == []
    assert [(q["row"], q["field"], q["reason"]) for q in bad] == [(3, "label", "bad_label")]
    # SNLI on the hub: integer labels 0 = entailment, 1 = neutral, 2 = contradiction
    out, _ = _build(tmp_path, "nli", [{"premise": "P", "hypothesis": "H", "label": 0}],
                    options={"label_map": {"0": 2, "1": 1, "2": 0}, "both_orders": False})
    assert [(r["text_a"], r["score"], r["id"]) for r in out["pair"]] == [("P", 2.0, "src:0")]


def test_nli_triplets_survive_chunk_boundaries():
    src = SourceConfig(name="nli", path="x", adapter="nli", options={"triplets": True})
    adapter = make_adapter(src)
    rows = [("P1", "e1", "entailment"), ("P1", "c1", "contradiction"), ("P2", "e2", "entailment"),
            ("P2", "c2", "contradiction"), ("P2", "c2b", "contradiction"), ("P3", "n3", "neutral")]
    chunks = [rows[:3], rows[3:]]  # P2 spans both chunks
    triplets, start = [], 0
    for part in chunks:
        table = pa.table({"premise": [r[0] for r in part], "hypothesis": [r[1] for r in part],
                          "label": [r[2] for r in part]})
        out = adapter.adapt(Chunk(table, "x", pa.array(range(start, start + len(part)), pa.int64())))
        start += len(part)
        triplets += [r for t in out.tables.get("retrieval", []) for r in t.to_pylist()]
    triplets += [r for t in adapter.flush().tables.get("retrieval", []) for r in t.to_pylist()]
    assert [(t["query"], t["positive"], t["negatives"]) for t in triplets] == [
        ("P1", "e1", ["c1"]), ("P2", "e2", ["c2", "c2b"])]
    assert triplets[1]["id"] == "nli:2:t" and triplets[1]["negative_origins"] == ["given", "given"]


def test_sts_numeric_scores_binary_labels_and_bad_scores(tmp_path):
    rows = [{"sentence1": "a", "sentence2": "b", "score": 4.5}, {"sentence1": "c", "sentence2": "d", "score": "0"},
            {"sentence1": "e", "sentence2": "f", "score": "high"}]
    out, bad = _build(tmp_path, "sts", rows)
    assert sorted((r["text_a"], r["text_b"], r["score"]) for r in out["pair"]) == [
        ("a", "b", 4.5), ("b", "a", 4.5), ("c", "d", 0.0), ("d", "c", 0.0)]
    assert [(q["row"], q["field"], q["reason"]) for q in bad] == [(2, "score", "bad_score")]
    out, bad = _build(tmp_path, "sts", [{"s1": "x", "s2": "y", "lab": 1}], columns={"text_a": "s1", "text_b": "s2", "score": "lab"},
                      options={"both_orders": False})
    assert [(r["score"], r["label"]) for r in out["pair"]] == [(1.0, "1")]


def test_sts_string_scores_from_csv(tmp_path):
    write(tmp_path / "in.csv", "sentence1,sentence2,score\na,b,3.2\nc,d,n/a\n")
    result = build_yaml(tmp_path, "name: t\nsources: [{name: s, path: in.csv, adapter: sts}]\n")
    assert sorted(r["score"] for r in read_shards(result.out_dir, "pair").to_pylist()) == [3.2, 3.2]
    [q] = read_shards(result.out_dir, "quarantine").to_pylist()
    assert (q["row"], q["field"], q["reason"]) == (1, "score", "bad_score")


def test_classification_labels_and_names(tmp_path):
    rows = [{"text": "I lost my card", "label": 0}, {"text": "rate?", "label": 2}, {"text": "", "label": 1}]
    out, bad = _build(tmp_path, "classification", rows, options={"label_names": {"0": "lost_card"}})
    assert [(r["text"], r["label"]) for r in out["classification"]] == [("I lost my card", "lost_card"), ("rate?", "2")]
    assert [(q["row"], q["field"], q["reason"]) for q in bad] == [(2, "text", "empty_text")]


def test_clustering_mteb_lists_and_flat_rows(tmp_path):
    rows = [{"sentences": ["s1", "s2", "s3"], "labels": ["a", "b", "a"]},
            {"sentences": ["t1"], "labels": ["c"]},
            {"sentences": ["u1", "u2"], "labels": ["x", "y", "z"]}]
    out, bad = _build(tmp_path, "clustering", rows, columns={"text": "sentences", "label": "labels"})
    assert [(r["id"], r["text"], r["label"]) for r in out["classification"]] == [
        ("src:0:s0", "s1", "a"), ("src:0:s1", "s2", "b"), ("src:0:s2", "s3", "a"), ("src:1", "t1", "c")]
    assert [(q["row"], q["reason"]) for q in bad] == [(2, "length_mismatch")]
    out, _ = _build(tmp_path, "clustering", [{"text": "x", "label": 3}, {"text": "y", "label": 4}])
    assert [(r["text"], r["label"]) for r in out["classification"]] == [("x", "3"), ("y", "4")]


@pytest.mark.parametrize("adapter", ["title_body", "qa", "reading_comprehension", "retrieval", "nli", "sts",
                                     "classification", "clustering"])
def test_every_adapter_quarantines_wrong_types_instead_of_crashing(tmp_path, adapter):
    from datakit.reading import Quarantined, Records, source_events

    cls = make_adapter(SourceConfig(name="s", path="x", adapter=adapter))
    row = {col: {"nested": "object"} for col in cls.columns().names}
    write(tmp_path / "in.jsonl", json.dumps(row) + "\n")
    events = list(source_events(SourceConfig(name="s", path="in.jsonl", adapter=adapter), Sandbox.of(tmp_path), False, 100))
    assert not [e for e in events if isinstance(e, Records)]
    [bad] = [q for e in events if isinstance(e, Quarantined) for q in e.table.to_pylist()]
    assert bad["reason"] in ("wrong_type", "missing_field")
    with pytest.raises(DataError, match="1 of 1 rows quarantined"):  # a whole source quarantined fails a build
        _build(tmp_path, adapter, [row])
