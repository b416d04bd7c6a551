import json
from pathlib import Path

import pytest

from tests.conftest import run, write


@pytest.fixture(scope="module")
def demo(demo_cli) -> Path:
    return demo_cli


def test_build_twice_is_up_to_date_unless_an_input_cannot_be_fingerprinted(demo, tmp_path):
    res = run("datakit", "build", "recipes/demo.yaml", "--out", str(demo), "--quiet")
    assert res.returncode == 0 and "up to date" not in res.stdout  # the demo has a SQL source: always rebuilt
    write(tmp_path / "in.csv", "question,answer\nq,a\n")
    write(tmp_path / "r.yaml", "name: x\nsources: [{name: s, path: in.csv, adapter: qa}]\n")
    for expected in (False, True):
        res = run("datakit", "build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--quiet")
        assert res.returncode == 0 and ("up to date" in res.stdout) is expected


def test_stats_and_sql(demo):
    res = run("datakit", "stats", str(demo))
    assert res.returncode == 0 and "classification" in res.stdout and "intents" in res.stdout
    res = run("datakit", "sql", str(demo), "SELECT dataset, count(*) AS n FROM pair GROUP BY 1 ORDER BY 1", "--json")
    assert res.returncode == 0
    assert [json.loads(line) for line in res.stdout.splitlines()] == [{"dataset": "nli", "n": 36},
                                                                      {"dataset": "sts", "n": 20}]
    res = run("datakit", "sql", str(demo), "SELECT reason FROM quarantine WHERE dataset = 'sts'")
    assert res.returncode == 0 and "bad_score" in res.stdout
    res = run("datakit", "sql", str(demo), "SELECT nope FROM pair")
    assert res.returncode == 1 and "query failed" in res.stderr


def test_validate(tmp_path):
    res = run("datakit", "validate", "recipes/demo.yaml")
    assert res.returncode == 0 and "ok:" in res.stdout
    write(tmp_path / "bad.yaml", "name: x\nsources:\n  - name: s\n    path: a.jsonl\n    adapter: qa\n    colour: red\n")
    res = run("datakit", "validate", str(tmp_path / "bad.yaml"))
    assert res.returncode == 2 and "bad.yaml:6" in res.stderr and "colour" in res.stderr
    write(tmp_path / "missing.yaml", "name: x\nsources: [{name: s, path: nowhere.csv, adapter: qa}]\n")
    res = run("datakit", "validate", str(tmp_path / "missing.yaml"))
    assert res.returncode == 1 and "no input file matches" in res.stderr


def test_build_strict_exit_code_and_message(tmp_path):
    write(tmp_path / "in.csv", "question,answer\nq,a\nq2,\n")
    write(tmp_path / "r.yaml", "name: x\nsources: [{name: s, path: in.csv, adapter: qa}]\n")
    res = run("datakit", "build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--strict", "--quiet")
    assert res.returncode == 1
    assert "in.csv, row 1, field answer: empty_text" in res.stderr.replace("\n", " ")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_stats_on_a_folder_that_is_not_an_output(tmp_path):
    res = run("datakit", "stats", str(tmp_path))
    assert res.returncode == 1 and "no manifest.json" in res.stderr


def test_trainer_inspect_reads_the_shards(demo):
    res = run("trainer", "inspect", str(demo))
    assert res.returncode == 0
    lines = {tuple(c.strip().replace(",", "") for c in line.split("│")[1:-1]) for line in res.stdout.splitlines()}
    counts = json.loads((demo / "manifest.json").read_text())["counts"]
    assert ("pair", "sts", "20") in lines and ("retrieval", "articles", str(counts["retrieval"]["articles"])) in lines
    res = run("trainer", "inspect", str(demo / "retrieval"))
    assert res.returncode == 1 and "no manifest.json" in res.stderr


def test_bench_build_decontaminate_and_dedup_commands(demo, tmp_path):
    res = run("datakit", "bench", "build", "--from-files", "recipes/data/bench/STSDemo.test.tsv",
              "--from-files", "recipes/data/bench/QADemo", "--out", str(tmp_path / "pack"))
    assert res.returncode == 0, res.stderr
    assert "STSDemo" in res.stdout and (tmp_path / "pack" / "pack.json").exists()
    write(tmp_path / "extra.tsv", "A cat is sitting on a windowsill.\tA dog is running in a field.\n")
    res = run("datakit", "bench", "build", "--from-files", str(tmp_path / "extra.tsv"), "--out", str(tmp_path / "p2"))
    assert res.returncode == 0, res.stderr
    res = run("datakit", "decontaminate", str(demo), "--bench", str(tmp_path / "pack"), "--bench", str(tmp_path / "p2"),
              "--out", str(tmp_path / "clean"))
    assert res.returncode == 0, res.stderr
    assert "contaminated: 2 of" in res.stdout  # the demo already dropped the first pack's matches
    report = json.loads((tmp_path / "clean" / "contamination.json").read_text())
    assert list(report["tasks"]) == ["p2/extra/test"]
    res = run("datakit", "dedup", str(tmp_path / "clean"), "--out", str(tmp_path / "dd"), "--threshold", "0.5")
    assert res.returncode == 0 and "step 1 (dedup) dropped" in res.stdout
    res = run("datakit", "bench", "build", "--out", str(tmp_path / "p3"))
    assert res.returncode == 1 and "--from-files" in res.stderr
    res = run("datakit", "decontaminate", str(demo), "--bench", str(tmp_path), "--out", str(tmp_path / "x"))
    assert res.returncode == 1 and "not a benchmark pack" in res.stderr
