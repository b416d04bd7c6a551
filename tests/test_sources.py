import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datakit.manifest import read_shards
from datakit.recipe import SourceConfig
from datakit.sources import ColumnSpec, Sandbox, SourceError, read_source
from tests.conftest import write


def _read(tmp_path, cols=("a", "b"), optional=(), batch_rows=50_000, **src):
    src.setdefault("adapter", "qa")
    cfg = SourceConfig(name="s", **src)
    chunks = list(read_source(cfg, Sandbox.of(tmp_path), ColumnSpec(list(cols), set(optional)), batch_rows))
    rows = [r for c in chunks for r in c.table.to_pylist()]
    idx = [i for c in chunks for i in c.rows.to_pylist()]
    bad = [q for c in chunks for q in c.quarantine]
    return rows, idx, bad, chunks


def test_jsonl_fast_path_projects_columns_and_numbers_rows(tmp_path):
    write(tmp_path / "x.jsonl", "".join(json.dumps({"a": f"q{i}", "b": f"p{i}", "extra": i}) + "\n" for i in range(10)))
    rows, idx, bad, _ = _read(tmp_path, path="x.jsonl")
    assert rows[3] == {"a": "q3", "b": "p3"} and idx == list(range(10)) and bad == []


def test_jsonl_bad_lines_are_quarantined_with_line_numbers(tmp_path):
    content = (b'{"a": "ok0", "b": "x"}\n'
               b'{"a": "broken\n'
               b'\n'
               b'{"a": "bad utf8 \xff", "b": "x"}\n'
               b'[1, 2]\n'
               b'{"a": 5, "b": "x"}\n'
               b'{"a": "ok6", "b": "x"}\n'
               b'{"a": "ok7", "b": "x"}')  # no final newline
    write(tmp_path / "x.jsonl", content)
    rows, idx, bad, _ = _read(tmp_path, path="x.jsonl")
    assert [r["a"] for r in rows] == ["ok0", "ok6", "ok7"]
    assert idx == [0, 6, 7]
    got = {(q["row"], q["reason"], q["field"]) for q in bad}
    assert got == {(1, "bad_json", ""), (3, "bad_utf8", ""), (4, "bad_json", ""), (5, "wrong_type", "a")}
    assert all(q["file"] == "x.jsonl" for q in bad)
    assert "line 2" in next(q["detail"] for q in bad if q["row"] == 1)


def test_jsonl_gzip_and_small_batches(tmp_path):
    lines = "".join(json.dumps({"a": f"q{i}", "b": "p"}) + "\n" for i in range(25))
    (tmp_path / "x.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    rows, idx, _, chunks = _read(tmp_path, path="x.jsonl.gz", batch_rows=10)
    assert [c.table.num_rows for c in chunks] == [10, 10, 5]
    assert idx == list(range(25)) and rows[-1]["a"] == "q24"


def test_globs_and_folders_continue_row_numbers_across_files(tmp_path):
    write(tmp_path / "d/part1.jsonl", '{"a": "1", "b": "x"}\n{"a": "2", "b": "x"}\n')
    write(tmp_path / "d/part2.jsonl", '{"a": "3", "b": "x"}\n')
    write(tmp_path / "d/notes.txt", "ignored: unknown extension\n")
    rows, idx, _, chunks = _read(tmp_path, path="d")
    assert [r["a"] for r in rows] == ["1", "2", "3"] and idx == [0, 1, 2]
    assert [c.file for c in chunks] == ["d/part1.jsonl", "d/part2.jsonl"]
    rows, idx, _, _ = _read(tmp_path, path="d/*.jsonl")
    assert idx == [0, 1, 2]
    with pytest.raises(SourceError, match="no input file matches"):
        _read(tmp_path, path="nothing/*.jsonl")


def test_csv_quotes_newlines_malformed_rows_and_bad_bytes(tmp_path):
    content = ('a,b\n'
               '"multi\nline",x\n'
               'only_one_field\n'
               '"with ""quotes""",y\n').encode() + b'bad \xff byte,z\n' + b'last,w\n'
    write(tmp_path / "x.csv", content)
    rows, idx, bad, _ = _read(tmp_path, path="x.csv")
    assert [r["a"] for r in rows] == ["multi\nline", 'with "quotes"', "last"]
    assert idx == [0, 2, 4]  # data rows as in the file: a rejected row does not shift the rows after it
    assert {(q["reason"], q["field"]) for q in bad} == {("malformed_row", ""), ("bad_utf8", "a")}
    assert next(q for q in bad if q["reason"] == "bad_utf8")["row"] == 3
    malformed = next(q for q in bad if q["reason"] == "malformed_row")
    assert malformed["row"] == 1 and malformed["detail"].startswith("line 4: expected 2 fields, found 1")


def test_tsv_without_header_and_quotes(tmp_path):
    write(tmp_path / "x.tsv", 'He said "hi\tok\nextra\tfields\there\n')
    rows, _, bad, _ = _read(tmp_path, cols=("s1", "s2"), path="x.tsv",
                            csv={"header": False, "column_names": ["s1", "s2"], "quote_char": False})
    assert rows == [{"s1": 'He said "hi', "s2": "ok"}]
    assert [q["reason"] for q in bad] == ["malformed_row"]
    write(tmp_path / "y.tsv", "s1\ts2\nhello\tworld\n")
    rows, *_ = _read(tmp_path, cols=("s1", "s2"), path="y.tsv")
    assert rows == [{"s1": "hello", "s2": "world"}]


def test_csv_keeps_strings_as_written(tmp_path):
    """No type guessing: a numeric-looking column stays text, so a later block cannot contradict it."""
    write(tmp_path / "x.csv", "a,b\n001,1.50\n")
    rows, *_ = _read(tmp_path, path="x.csv")
    assert rows == [{"a": "001", "b": "1.50"}]


def test_missing_required_column_is_a_clear_error_and_optional_reads_null(tmp_path):
    write(tmp_path / "x.csv", "a,c\n1,2\n")
    with pytest.raises(SourceError, match=r"x.csv: no column 'b' \(columns: a, c\)"):
        _read(tmp_path, path="x.csv")
    rows, *_ = _read(tmp_path, path="x.csv", optional=("b",))
    assert rows == [{"a": "1", "b": None}]


def test_parquet(tmp_path):
    pq.write_table(pa.table({"a": ["x", "y", "z"], "b": ["1", "2", "3"], "c": [1, 2, 3]}), tmp_path / "x.parquet")
    rows, idx, _, chunks = _read(tmp_path, path="x.parquet", batch_rows=2)
    assert [r["a"] for r in rows] == ["x", "y", "z"] and idx == [0, 1, 2] and len(chunks) == 2
    assert chunks[0].table.column_names == ["a", "b"]


def test_hf_dataset_saved_to_disk_and_local_data_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"a": ["t1", "t2"], "b": ["x", "y"]}),
        "test": datasets.Dataset.from_dict({"a": ["e1"], "b": ["z"]}),
    })
    dd.save_to_disk(str(tmp_path / "saved"))
    rows, idx, _, _ = _read(tmp_path, hf={"path": "saved", "split": "test"})
    assert rows == [{"a": "e1", "b": "z"}] and idx == [0]
    with pytest.raises(SourceError, match="no split 'dev'"):
        _read(tmp_path, hf={"path": "saved", "split": "dev"})

    write(tmp_path / "folder/train.jsonl", '{"a": "f1", "b": "x"}\n{"a": "f2", "b": "y"}\n')
    rows, *_ = _read(tmp_path, hf={"path": "folder", "split": "train"})
    assert [r["a"] for r in rows] == ["f1", "f2"]
    rows, *_ = _read(tmp_path, hf={"path": "folder", "split": "train", "streaming": True})
    assert [r["a"] for r in rows] == ["f1", "f2"]


def test_duckdb_sql_over_local_files(tmp_path):
    write(tmp_path / "x.csv", "a,b,keep\nq1,p1,1\nq2,p2,0\nq3,p3,1\n")
    rows, idx, _, _ = _read(tmp_path, sql="SELECT a, b FROM read_csv('x.csv') WHERE keep = 1 ORDER BY a")
    assert rows == [{"a": "q1", "b": "p1"}, {"a": "q3", "b": "p3"}] and idx == [0, 1]
    with pytest.raises(SourceError, match="sql"):
        _read(tmp_path, sql="SELECT a FROM read_csv('x.csv')")
    with pytest.raises(SourceError, match="sql source failed"):
        _read(tmp_path, sql="SELECT * FROM no_such_table")


def test_limit(tmp_path):
    write(tmp_path / "x.jsonl", "".join(json.dumps({"a": str(i), "b": "p"}) + "\n" for i in range(20)))
    rows, *_ = _read(tmp_path, path="x.jsonl", limit=7, batch_rows=5)
    assert [r["a"] for r in rows] == [str(i) for i in range(7)]


def test_a_header_naming_a_read_column_twice_is_an_error_naming_it(tmp_path):
    write(tmp_path / "d.tsv", "sentence1\tsentence2\tscore\tsentence1\na\tb\t3\tc\n")
    with pytest.raises(SourceError, match=r"d.tsv: the header names column\(s\) 'sentence1' more than once"):
        _read(tmp_path, ("sentence1", "sentence2", "score"), path="d.tsv")
    write(tmp_path / "ok.tsv", "sentence1\tsentence2\tscore\tx\tx\na\tb\t3\t1\t2\n")  # unread duplicates: fine
    rows, _, bad, _ = _read(tmp_path, ("sentence1", "sentence2", "score"), path="ok.tsv")
    assert rows == [{"sentence1": "a", "sentence2": "b", "score": "3"}] and bad == []


def test_scores_outside_a_declared_range_are_quarantined(tmp_path):
    write(tmp_path / "sts.tsv", "sentence1\tsentence2\tscore\na\tb\t-3\nc\td\t4.5\ne\tf\t17\ng\th\tnan\n")
    recipe = write(tmp_path / "r.yaml", "name: x\nsources: [{name: s, path: sts.tsv, adapter: sts, max_quarantine: 1.0, "
                                        "options: {both_orders: false, score_range: [0, 5]}}]\n")
    from datakit.pipeline import build
    from datakit.recipe import load_recipe

    result = build(load_recipe(recipe), tmp_path / "out")
    assert result.manifest["counts"]["pair"] == {"s": 1}
    bad = {q["row"]: q for q in read_shards(tmp_path / "out", "quarantine").to_pylist()}
    assert set(bad) == {0, 2, 3} and {q["reason"] for q in bad.values()} == {"bad_score"}
    assert bad[0]["detail"] == "score -3 is outside score_range [0, 5]" and bad[0]["field"] == "score"
    assert "not a finite number" in bad[3]["detail"]


def test_where_selects_rows_by_a_split_column_in_one_file(tmp_path):
    """SICK keeps train, trial and test in one file with a split column: `where` reads one split without SQL."""
    write(tmp_path / "sick.tsv", "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tSemEval_set\n"
          "1\tA man sits\tA man is sitting\t4.5\tTRAIN\n2\tA dog runs\tA cat sleeps\t1.2\tTEST\n"
          "3\tKids play\tChildren play\t4.8\tTEST\n4\tx\ty\t2\tTRIAL\n")
    rows, idx, bad, _ = _read(tmp_path, cols=("sentence_A",), path="sick.tsv", where={"SemEval_set": "TEST"})
    assert rows == [{"sentence_A": "A dog runs"}, {"sentence_A": "Kids play"}]  # the where column is not passed on
    assert idx == [1, 2] and bad == []  # row numbers stay those of the file
    rows, *_ = _read(tmp_path, cols=("sentence_A",), path="sick.tsv", where={"SemEval_set": ["TEST", "TRIAL"]},
                     limit=2)
    assert [r["sentence_A"] for r in rows] == ["A dog runs", "Kids play"]  # limit counts selected rows
    with pytest.raises(SourceError, match="no column 'split'"):
        _read(tmp_path, cols=("sentence_A",), path="sick.tsv", where={"split": "test"})


def test_where_compares_numbers_and_booleans_as_text(tmp_path):
    write(tmp_path / "x.jsonl", "".join(json.dumps({"a": f"q{i}", "b": "p", "fold": i % 3, "gold": i % 2 == 0}) + "\n"
                                        for i in range(9)))
    rows, idx, *_ = _read(tmp_path, path="x.jsonl", where={"fold": [0, 2], "gold": True})
    assert idx == [0, 2, 6, 8] and {r["a"] for r in rows} == {"q0", "q2", "q6", "q8"}
    pq.write_table(pa.table({"a": ["x", "y", None], "b": ["1", "2", "3"], "lang": ["en", None, "en"]}),
                   tmp_path / "x.parquet")
    rows, idx, *_ = _read(tmp_path, path="x.parquet", where={"lang": "en"})
    assert idx == [0, 2]  # a null never matches


def test_where_values_must_be_plain(tmp_path):
    with pytest.raises(ValueError, match="where.split"):
        SourceConfig(name="s", adapter="qa", path="x.jsonl", where={"split": {"eq": "test"}})
