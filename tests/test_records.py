import math

import pyarrow as pa
import pytest

from datakit import records


def _retrieval(**over):
    row = {"id": "d:0", "dataset": "d", "instruction": "", "query": "q", "positive": "p",
           "negatives": ["n"], "negative_origins": ["given"], "lineage": None}
    row.update(over)
    return row


def test_schemas_cover_the_three_kinds_and_passages():
    assert set(records.KINDS) == {"retrieval", "pair", "classification"}
    assert set(records.SCHEMAS) == {*records.KINDS, records.PASSAGE}
    for kind in records.KINDS:
        names = records.schema(kind).names
        assert names[:3] == ["id", "dataset", "instruction"] and names[-1] == "lineage"
    assert records.schema("retrieval").field("negatives").type == pa.list_(pa.string())
    assert records.schema("pair").field("score").type == pa.float64()


def test_validate_rejects_empty_text_nan_score_and_bad_origins():
    pairs = pa.Table.from_pylist([
        {"id": "a", "dataset": "d", "instruction": "", "text_a": "x", "text_b": "y", "score": 1.0, "label": "1", "lineage": None},
        {"id": "b", "dataset": "d", "instruction": "", "text_a": "  ", "text_b": "y", "score": 1.0, "label": "1", "lineage": None},
        {"id": "c", "dataset": "d", "instruction": "", "text_a": "x", "text_b": "y", "score": math.nan, "label": "1", "lineage": None},
        {"id": "e", "dataset": "d", "instruction": "", "text_a": "x", "text_b": None, "score": 2.0, "label": "1", "lineage": None},
    ], schema=records.schema("pair"))
    good, rejected = records.validate("pair", pairs)
    assert good.column("id").to_pylist() == ["a"]
    assert rejected.indices.to_pylist() == [1, 2, 3]
    assert list(zip(rejected.fields, rejected.reasons)) == [
        ("text_a", "empty_text"), ("score", "bad_score"), ("text_b", "missing_field")]

    ret = pa.Table.from_pylist([
        _retrieval(),
        _retrieval(id="d:1", negative_origins=[]),
        _retrieval(id="d:2", negative_origins=["bogus"]),
        _retrieval(id="d:3", negatives=[""]),
    ], schema=records.schema("retrieval"))
    good, rejected = records.validate("retrieval", ret)
    assert good.column("id").to_pylist() == ["d:0"]
    assert rejected.reasons == ["length_mismatch", "bad_origin", "empty_text"]


def test_conform_names_the_column_of_a_wrong_type():
    table = pa.table({"id": ["a"], "dataset": ["d"], "instruction": [""], "text": [["a", "list"]], "label": ["x"],
                      "lineage": pa.nulls(1, records.LINEAGE)})
    with pytest.raises(records.RecordError, match="column 'text'"):
        records.conform("classification", table)
    with pytest.raises(records.RecordError, match="lacks column"):
        records.conform("classification", pa.table({"id": ["a"]}))
    with pytest.raises(records.RecordError, match="unknown record kind"):
        records.schema("triplet")


def test_lineage_array_is_columnar_and_typed():
    lin = records.lineage_array("src", "f.jsonl", [3, 7], "adapter:qa", detail=["x", "y"])
    assert lin.type == records.LINEAGE
    assert lin.to_pylist()[1] == {"source": "src", "file": "f.jsonl", "row": 7, "parent_id": "",
                                  "events": [{"step": "adapter:qa", "model": "", "prompt_id": "", "detail": "y"}]}
    added = records.add_event(lin, "paraphrase", model="m", prompt_id="p@1")
    assert [e["step"] for e in added.to_pylist()[0]["events"]] == ["adapter:qa", "paraphrase"]
