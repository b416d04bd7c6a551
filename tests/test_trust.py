"""No false success: mistakes that used to exit 0 with an empty or shrunken corpus now fail (or report) clearly."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pytest

from datakit.reading import DataError
from datakit.manifest import read_manifest, read_shards
from tests.conftest import ROOT, build_yaml, write


def _datakit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datakit.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=os.environ.copy(), timeout=300)


def test_a_wrong_adapter_fails_the_build_naming_source_reasons_and_an_example(tmp_path):
    write(tmp_path / "qa.jsonl", "".join(json.dumps({"question": f"q{i}", "answer": [f"a{i}", "b"]}) + "\n"
                                         for i in range(20)))
    with pytest.raises(DataError) as exc:  # `qa` on a list-valued answer column
        build_yaml(tmp_path, "name: t\nsources: [{name: faq, path: qa.jsonl, adapter: qa}]\n")
    msg = str(exc.value)
    assert "source 'faq': 20 of 20 rows quarantined (100%" in msg and "wrong_type 20" in msg
    assert "qa.jsonl, row 0, field answer" in msg and "max_quarantine: 1.0" in msg
    assert not (tmp_path / "out" / "manifest.json").exists()
    # validate says so before any build
    write(tmp_path / "r.yaml", f"name: t\nsources: [{{name: faq, path: {tmp_path / 'qa.jsonl'}, adapter: qa}}]\n")
    r = _datakit("validate", str(tmp_path / "r.yaml"))
    assert r.returncode != 0 and "20 of 20 sampled rows would be quarantined" in r.stderr
    # and a recipe that accepts it says so
    result = build_yaml(tmp_path, "name: t\nsources: [{name: faq, path: qa.jsonl, adapter: retrieval, "
                                  "columns: {query: question, positive: answer}}]\n")
    assert result.manifest["counts"]["retrieval"]["faq"] == 40


def test_a_missing_column_and_an_accepted_quarantine(tmp_path):
    write(tmp_path / "x.jsonl", "".join(json.dumps({"title": f"t{i}"}) + "\n" for i in range(10)))
    with pytest.raises(DataError, match="10 of 10 rows quarantined .*missing_field 10"):
        build_yaml(tmp_path, "name: t\nsources: [{name: x, path: x.jsonl, adapter: title_body}]\n")
    write(tmp_path / "y.jsonl", json.dumps({"title": "a", "body": "b"}) + "\n")
    result = build_yaml(tmp_path, "name: t\nsources: [{name: x, path: x.jsonl, adapter: title_body, "
                                  "max_quarantine: 1.0}, {name: y, path: y.jsonl, adapter: title_body}]\n")
    assert result.manifest["quarantined"]["by_dataset"]["x"] == {"missing_field": 10}


def test_a_build_that_produces_nothing_fails(tmp_path):
    write(tmp_path / "x.jsonl", json.dumps({"title": "same", "body": "same"}) + "\n")
    with pytest.raises(DataError, match="produced no records"):  # filter drops identical query/positive
        build_yaml(tmp_path, "name: t\nsources: [{name: x, path: x.jsonl, adapter: title_body}]\n"
                             "steps: [{type: filter}]\n")


def test_a_json_file_holding_one_array_is_read_as_an_array(tmp_path):
    write(tmp_path / "x.json", json.dumps([{"title": "t1", "body": "b1"}, {"title": "t2", "body": "b2"}, "junk"]))
    result = build_yaml(tmp_path, "name: t\nsources: [{name: x, path: x.json, adapter: title_body}]\n")
    assert [r["query"] for r in read_shards(result.out_dir, "retrieval").to_pylist()] == ["t1", "t2"]
    [q] = read_shards(result.out_dir, "quarantine").to_pylist()
    assert (q["row"], q["reason"]) == (2, "bad_json") and "array item 2" in q["detail"]


def _csv_with_stray_quote(path, n, at):
    lines = ["sentence1,sentence2,score"]
    for i in range(n):
        s1 = f'"quoted start of row {i}' if i == at else f"first sentence {i}"
        lines.append(f"{s1},second sentence {i},{i % 5}")
    write(path, "\n".join(lines) + "\n")


def test_an_unbalanced_quote_is_reported_with_the_rows_it_swallowed(tmp_path):
    _csv_with_stray_quote(tmp_path / "late.csv", 3000, at=2900)  # 99 rows swallowed: reported, not fatal
    result = build_yaml(tmp_path, "name: t\nsources: [{name: s, path: late.csv, adapter: sts, "
                                  "options: {both_orders: false}}]\n")
    [q] = [q for q in read_shards(result.out_dir, "quarantine").to_pylist() if q["reason"] == "unbalanced_quote"]
    assert q["row"] == 2900 and "swallowed the 99 rows after it" in q["detail"] and "quote_char: false" in q["detail"]
    assert result.manifest["quarantined"]["lost_rows"] == {"s": 99}
    assert result.manifest["counts"]["pair"]["s"] == 2900
    _csv_with_stray_quote(tmp_path / "early.csv", 3000, at=1400)  # over half the file swallowed: the build fails
    with pytest.raises(DataError, match=r"source 's': 1,600 of 3,000 rows quarantined .*rows swallowed by an "
                                        r"unbalanced quote 1,599.*quote_char: false"):
        build_yaml(tmp_path, "name: t\nsources: [{name: s, path: early.csv, adapter: sts}]\n")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_truncated_gzip_keeps_the_rows_before_and_fails_naming_the_byte(tmp_path, fmt):
    if fmt == "jsonl":
        text = "".join(json.dumps({"question": f"q{i}", "answer": f"answer number {i} " * 5}) + "\n"
                       for i in range(20000))
    else:
        text = "question,answer\n" + "".join(f"q{i},answer number {i}\n" for i in range(60000))
    data = gzip.compress(text.encode())
    (tmp_path / f"x.{fmt}.gz").write_bytes(data[: len(data) // 2])
    recipe = write(tmp_path / "r.yaml", f"name: t\nsources: [{{name: x, path: x.{fmt}.gz, adapter: qa}}]\n")
    r = _datakit("build", str(recipe), "--out", str(tmp_path / "out"), "-q")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"x.{fmt}.gz is truncated" in r.stderr and "decompressed bytes" in r.stderr
    kept = read_manifest(tmp_path / "out")["counts"]["retrieval"]["x"]
    assert 1000 < kept < (20000 if fmt == "jsonl" else 60000)
    [q] = read_shards(tmp_path / "out", "quarantine").to_pylist()
    assert q["reason"] == "truncated_input" and q["row"] == kept
    rows = read_shards(tmp_path / "out", "retrieval").to_pylist()
    assert [r["query"] for r in rows] == [f"q{i}" for i in range(kept)]  # every row before the break
    last = f"answer number {kept - 1} " * (5 if fmt == "jsonl" else 1)
    assert rows[-1]["positive"].strip() == last.strip()  # and the last one whole


def test_recipe_sql_is_one_select_reading_only_the_files_it_names(tmp_path):
    write(tmp_path / "data" / "qa.csv", "q,a\nwhat is up,the sky\nhow are you,fine thanks\n")
    ok = tmp_path / "ok.yaml"
    write(ok, """name: s
sources:
  - name: qa
    sql: "SELECT q AS question, a AS answer FROM read_csv('data/qa.csv')"
    adapter: qa
""")
    r = _datakit("validate", str(ok))
    assert r.returncode == 0, r.stderr
    assert _datakit("build", str(ok), "--out", str(tmp_path / "out"), "-q").returncode == 0
    for name, sql, message in [
        ("copy", "COPY (SELECT 1 AS question, 2 AS answer) TO 'leak.csv'", "only a single SELECT"),
        ("two", "SELECT 1 AS question, 2 AS answer; SELECT 3", "only a single SELECT"),
        ("attach", "ATTACH 'other.duckdb'", "only a single SELECT"),
        ("built", "SELECT content AS question, content AS answer FROM read_text(concat('/et', 'c/hostname'))",
         "must name its files as a string literal"),  # a path put together at run time cannot be checked
        ("web", "SELECT * FROM read_csv('https://example.com/qa.csv')", "local files only"),
    ]:
        bad = write(tmp_path / f"{name}.yaml", f'name: s\nsources:\n  - name: qa\n    sql: "{sql}"\n    adapter: qa\n')
        for args in (("validate", str(bad)), ("build", str(bad), "--out", str(tmp_path / name), "-q")):
            r = _datakit(*args)
            assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr, (name, args, r.stderr)
    assert not (tmp_path / "leak.csv").exists() and not (ROOT / "leak.csv").exists()


def test_datakit_sql_is_read_only_unless_unsafe(tmp_path):
    write(tmp_path / "x.jsonl", json.dumps({"title": "t", "body": "b"}) + "\n")
    build_yaml(tmp_path, "name: t\nsources: [{name: x, path: x.jsonl, adapter: title_body}]\n")
    out = str(tmp_path / "out")
    r = _datakit("sql", out, "SELECT count(*) AS n FROM retrieval", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"n": 1}
    target = tmp_path / "copy.csv"
    for q in (f"COPY (SELECT * FROM retrieval) TO '{target}'", f"SELECT * FROM read_text('{tmp_path / 'x.jsonl'}')",
              f"ATTACH '{tmp_path / 'db.duckdb'}'"):
        r = _datakit("sql", out, q)
        assert r.returncode != 0 and ("only a single SELECT" in r.stderr or "Permission" in r.stderr), (q, r.stderr)
    assert not target.exists()
    r = _datakit("sql", out, f"COPY (SELECT query FROM retrieval) TO '{target}'", "--unsafe")
    assert r.returncode == 0 and target.read_text().splitlines() == ["query", "t"]
