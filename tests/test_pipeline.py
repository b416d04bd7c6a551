import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from datakit import records
from datakit.query import connect
from datakit.pipeline import build
from datakit.reading import DataError
from datakit.recipe import load_recipe
from datakit.manifest import read_manifest, read_shards, sha256_file, shard_files
from tests.conftest import ROOT, build_yaml, write

DEMO = ROOT / "recipes" / "demo.yaml"


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "out"
    build(load_recipe(DEMO), out)
    return out


def test_demo_counts_quarantine_and_manifest(demo_out):
    m = read_manifest(demo_out)
    assert set(m["counts"]) == {"retrieval", "pair", "classification"}
    assert m["counts"]["pair"]["sts"] == 20  # 12 good pairs, both orders, less 2 pairs found in the sample benchmark
    assert m["dropped"]["1:dedup"] == {"exact_duplicate": 1, "near_duplicate": 1}  # the two repeated articles
    assert m["contamination"]["by_dataset"] == {"faq": 1, "sts": 4}
    assert (demo_out / "contamination.json").exists()
    arts = m["negatives"]["articles"]  # the LLM writes some, mining (offline, packaged MiniLM) fills the rest
    assert arts["mined"] + arts["llm"] == 4 * m["counts"]["retrieval"]["articles"] and arts["records_short"] == 0
    assert m["counts"]["retrieval"]["nli"] == 6  # one triplet per premise
    assert m["quarantined"]["n"] == len(read_shards(demo_out, "quarantine"))
    assert m["quarantined"]["by_dataset"]["articles"] == {"bad_json": 1, "wrong_type": 1, "empty_text": 1}
    assert m["recipe"]["name"] == "demo" and len(m["recipe"]["sha256"]) == 64
    assert {"pyarrow", "duckdb", "embedkit", "python"} <= set(m["versions"])
    assert m["inputs"]["articles"]["files"][0]["path"].endswith("articles.jsonl")
    assert "0:filter" in m["dropped"] and [s["type"] for s in m["steps"]] == [
        "filter", "dedup", "paraphrase", "paraphrase", "augment", "llm_negatives", "decontaminate", "mine_negatives"]
    for shard in m["shards"]:
        path = demo_out / shard["file"]
        assert sha256_file(path) == shard["sha256"] and path.stat().st_size == shard["bytes"]
    peaks = m["peak_rss_mib"]  # the process's peak memory while each stage ran
    assert set(peaks) <= {*m["timings_s"], "build"} and "7:mine_negatives" in peaks
    assert peaks["build"] == max(v for k, v in peaks.items() if k != "build") > 100
    anon = m["peak_anon_mib"]  # the part of it that is the process's own (not mapped files)
    assert set(anon) == set(peaks) and all(0 < anon[k] <= peaks[k] for k in anon)
    total = {k: sum(v.values()) for k, v in m["counts"].items()}
    for kind, n in total.items():
        assert sum(s["rows"] for s in m["shards"] if s["kind"] == kind) == n


def test_demo_synthesises_offline_with_the_embedded_model(demo_out):
    m = read_manifest(demo_out)
    syn = m["synthesis"]
    assert set(syn) == {"paraphrase", "paraphrase#2", "augment", "llm_negatives"}
    for name, e in syn.items():
        assert e["model"] == "embedded/smollm2" and e["failed"] == 0, name
        assert e["calls"] + e["cache_hits"] > 0 and e["cost_usd"] == 0.0
        assert {"prompt_tokens", "completion_tokens", "kept", "dropped"} <= set(e)
        assert e["kept"] + sum(e["dropped"].values()) >= e["records_selected"]
        verdicts = [x["verdict"] for x in e["examples"]]  # a few outputs per verdict, next to their source
        assert set(verdicts) <= {"kept", *e["dropped"]} and max(verdicts.count(v) for v in verdicts) <= 3
        assert all(x["id"] and x["source"] and x["file"] for x in e["examples"])
    for ds, sims in m["mining"]["similarity"].items():  # histograms for the audit report
        assert all(sum(v["hist"]["counts"]) == v["n"] for v in sims.values() if v["n"]), ds
    assert m["llm_budget"] == {**m["llm_budget"], "max_budget_usd": 1.0, "reached": False}
    retrieval = read_shards(demo_out, "retrieval")
    parents = pc.struct_field(retrieval.column("lineage"), "parent_id")
    generated = retrieval.filter(pc.not_equal(parents, ""))
    # kept generations become records (decontamination, after synthesis, may still drop some)
    assert 0 < generated.num_rows <= syn["paraphrase"]["kept"] + syn["augment"]["kept"]


def test_the_manifest_reads_typed_and_a_broken_one_is_refused_naming_the_field(demo_out, tmp_path):
    from datakit.manifest import InconsistentOutput, load, write_manifest
    from datakit.manifest_schema import parallel_stage_key, stage_key, stage_label

    m = load(demo_out)
    raw = read_manifest(demo_out)
    assert m.records == sum(n for per in raw["counts"].values() for n in per.values())
    assert m.step_dropped(1) == raw["dropped"]["1:dedup"] and m.steps[1].type == "dedup"
    assert m.synthesis["paraphrase"].calls + m.synthesis["paraphrase"].cache_hits > 0
    assert m.shards[0].sha256 == raw["shards"][0]["sha256"]
    c = m.contamination  # the decontaminate step's summary, typed for the card and the report
    assert c.records_checked == raw["contamination"]["records_checked"] > 0 and c.action == "drop"
    assert c.by_task == raw["contamination"]["by_task"] and set(c.pack_tasks) >= set(c.by_task)
    # the stage names: made and read in one place
    assert stage_label(stage_key(2, "paraphrase")) == "step 3 (paraphrase)"
    assert stage_label(parallel_stage_key([(0, "filter"), (1, "paraphrase")])) == \
        "step 1 (filter) + step 2 (paraphrase) on Ray"
    assert [stage_label(k) for k in m.timings_s][::len(m.timings_s) - 1] == ["reading sources", "writing and setup"]
    # a manifest lacking what readers need: one error naming the field (not a KeyError in a reader)
    broken = tmp_path / "broken"
    shutil.copytree((demo_out / "current").resolve(), broken)
    doc = dict(raw)
    doc.pop("recipe")
    (broken / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(InconsistentOutput, match=r"manifest.json: recipe: Field required"):
        load(broken)
    doc["recipe"] = {"name": "x"}  # and a writer cannot publish one
    with pytest.raises(ValueError, match="sha256"):
        write_manifest(tmp_path, doc)
    assert not (tmp_path / "manifest.json").exists()


def test_shards_round_trip_through_pyarrow_datasets_and_duckdb(demo_out):
    import datasets

    for kind in records.KINDS:
        table = read_shards(demo_out, kind)
        assert table.schema.equals(records.schema(kind))
        records.validate(kind, table)  # conforms
        [path] = shard_files(demo_out, kind)
        ds = datasets.Dataset.from_file(str(path))
        assert ds.num_rows == table.num_rows and ds[0]["id"] == table.column("id")[0].as_py()
    con = connect(demo_out)
    n = con.execute("SELECT count(*) FROM retrieval WHERE len(negatives) > 0").fetchone()[0]
    assert n == read_shards(demo_out, "retrieval").to_pandas()["negatives"].map(len).gt(0).sum()
    rows = con.execute("SELECT dataset, count(*) FROM pair GROUP BY dataset ORDER BY 1").fetchall()
    assert rows == [("nli", 36), ("sts", 20)]
    assert con.execute("SELECT lineage.events[1].step FROM classification WHERE dataset='topics' LIMIT 1").fetchone() \
        == ("adapter:classification",)
    # DuckDB can also scan the shard files directly through pyarrow
    pair_shard = pa.ipc.open_stream(pa.memory_map(str(shard_files(demo_out, "pair")[0]))).read_all()  # noqa: F841 (scanned by DuckDB)
    assert duckdb.sql("SELECT count(*) FROM pair_shard").fetchall() == [(56,)]


def test_shard_rows_split_and_up_to_date_skip(tmp_path):
    write(tmp_path / "in.jsonl", "".join(json.dumps({"title": f"t{i}", "body": f"b{i}"}) + "\n" for i in range(25)))
    recipe = """
        name: split
        sources: [{name: s, path: in.jsonl, adapter: title_body}]
        output: {shard_rows: 10}
    """
    first = build_yaml(tmp_path, recipe)
    assert [s["rows"] for s in first.manifest["shards"]] == [10, 10, 5]
    assert read_shards(first.out_dir, "retrieval").column("id").to_pylist() == [f"s:{i}" for i in range(25)]
    again = build_yaml(tmp_path, recipe)
    assert again.skipped and again.manifest["created"] == first.manifest["created"]
    forced = build_yaml(tmp_path, recipe, force=True)
    assert not forced.skipped
    time.sleep(0.01)
    with open(tmp_path / "in.jsonl", "a") as fh:
        fh.write(json.dumps({"title": "new", "body": "row"}) + "\n")
    changed = build_yaml(tmp_path, recipe)
    assert not changed.skipped and changed.manifest["counts"]["retrieval"]["s"] == 26
    assert [s["rows"] for s in changed.manifest["shards"]] == [10, 10, 6]


def test_strict_names_file_row_and_field_and_keeps_previous_output(tmp_path):
    write(tmp_path / "in.jsonl", '{"title": "t", "body": "b"}\n')
    recipe = "name: s\nsources: [{name: s, path: in.jsonl, adapter: title_body}]\n"
    good = build_yaml(tmp_path, recipe)
    write(tmp_path / "in.jsonl", '{"title": "t", "body": "b"}\n{"title": "t2", "body": "  "}\n')
    with pytest.raises(DataError, match=r"in.jsonl, row 1, field body: empty_text"):
        build_yaml(tmp_path, recipe, strict=True)
    assert read_manifest(good.out_dir)["created"] == good.manifest["created"]
    assert len(read_shards(good.out_dir, "retrieval")) == 1
    assert not list(good.out_dir.glob(".staging-*"))
    lenient = build_yaml(tmp_path, recipe)
    assert lenient.manifest["quarantined"]["n"] == 1


def test_filter_step_counts_drops(tmp_path):
    rows = [{"title": "ok title", "body": "a long enough body"}, {"title": "x", "body": "short title"},
            {"title": "same", "body": "Same"}, {"title": "long body", "body": "y" * 50}]
    write(tmp_path / "in.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    result = build_yaml(tmp_path, """
        name: f
        sources: [{name: s, path: in.jsonl, adapter: title_body}]
        steps:
          - {type: filter, min_chars: 2, max_chars: 40}
    """)
    assert result.manifest["counts"]["retrieval"]["s"] == 1
    assert result.manifest["dropped"]["0:filter"] == {"too_short:query": 1, "query_equals_positive": 1,
                                                      "too_long:positive": 1}
    assert result.manifest["steps"][0]["report"]["kept"] == 1


KILL_SCRIPT = """
import sys
from datakit.pipeline import build
from datakit.recipe import load_recipe
build(load_recipe(sys.argv[1]), sys.argv[2], batch_rows=2000)
"""


def test_killed_build_leaves_no_shard_that_looks_whole(tmp_path):
    body = "x" * 200
    write(tmp_path / "in.jsonl", "".join(json.dumps({"title": f"t{i}", "body": body}) + "\n" for i in range(300_000)))
    write(tmp_path / "r.yaml", "name: k\nsources: [{name: s, path: in.jsonl, adapter: title_body}]\n"
                               "output: {shard_rows: 2000}\n")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tmp_path / "r.yaml"), str(out)],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob(".staging-*/retrieval/part-*.arrow")):
        time.sleep(0.05)
    assert proc.poll() is None, "the build finished before it could be killed; make the input larger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("retrieval/*.arrow"))  # nothing outside staging looks like output
    for part in out.glob(".staging-*/retrieval/part-*.arrow"):  # every renamed shard is whole
        assert len(pa.ipc.open_stream(pa.memory_map(str(part))).read_all()) == 2000
    result = build(load_recipe(tmp_path / "r.yaml"), out, batch_rows=50_000)
    assert result.manifest["counts"]["retrieval"]["s"] == 300_000
    assert not list(out.glob(".staging-*"))


_PEAK_SCRIPT = """
import json, time
import numpy as np
import pyarrow as pa
from datakit.executors import StageClock, current_rss

if current_rss() is None:
    print("null")
    raise SystemExit
table = pa.table({"x": [1]})

def small():
    time.sleep(0.3)
    yield "k", table

def big(stream):
    for kind, t in stream:
        held = np.ones(400 * 2**20 // 8)  # 400 MiB, touched
        time.sleep(0.3)
        del held
        yield kind, t

clock = StageClock()
stop = clock.watch_memory(every_s=0.02)
assert len(list(clock.wrap("1:big", big(clock.wrap("read", small()))))) == 1
stop()
print(json.dumps([clock.peak_rss_mib(), clock.peak_anon_mib()]))
"""


def test_peak_memory_is_counted_for_the_stage_that_holds_it():
    """A stage that holds 400 MiB while it makes its batch gets that peak; the stage before it does not. Measured
    in a fresh process: in a test worker that ran builds before, malloc serves the 400 MiB from heap pages it
    already holds, and RSS does not move (CI saw 3018 MiB in both stages)."""
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout)
    if measured is None:
        pytest.skip("no /proc/self/statm on this system")
    for peaks in measured:  # 400 MiB of arrays: anonymous memory
        assert peaks["1:big"] - peaks["read"] > 300 and peaks["build"] == peaks["1:big"]
