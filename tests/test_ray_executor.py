"""The Ray executor against the local one on a real local Ray cluster (ray.init(num_cpus=2)): same records,
same counts, one LLM cache and one budget across workers."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from datakit.pipeline import build
from datakit.reading import DataError
from datakit.recipe import load_recipe
from datakit.manifest import read_shards

from tests.conftest import ROOT, write

ray = pytest.importorskip("ray")
from datakit.ray_executor import RayExecutor  # noqa: E402

KINDS = ("retrieval", "pair", "classification", "quarantine")
SAME_KEYS = ("counts", "quarantined", "dropped", "negatives", "contamination", "rows_read")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"DATAKIT_CACHE": os.environ["DATAKIT_CACHE"]}})
    yield
    ray.shutdown()


def _same_outputs(a, b) -> None:
    for kind in KINDS:
        ta, tb = read_shards(a.out_dir, kind), read_shards(b.out_dir, kind)
        assert ta.equals(tb), kind  # same records in the same order, byte for byte
    for key in SAME_KEYS:
        assert a.manifest.get(key) == b.manifest.get(key), key
    for name, entry in a.manifest.get("synthesis", {}).items():
        other = b.manifest["synthesis"][name]
        assert (entry["kept"], entry["dropped"], entry["records_selected"]) == \
               (other["kept"], other["dropped"], other["records_selected"]), name
    assert [s["report"]["kept"] for s in a.manifest["steps"]] == [s["report"]["kept"] for s in b.manifest["steps"]]


def test_demo_recipe_local_and_ray_agree(cluster, tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "demo.yaml")
    ours = build(recipe, tmp_path / "ray", executor=RayExecutor())
    local = build(recipe, tmp_path / "local")
    assert ours.manifest["executor"]["name"] == "ray" and ours.manifest["executor"]["cpus"] == 2
    assert local.manifest["executor"] == {"name": "local"}
    _same_outputs(ours, local)


QA = [(f"How do I {verb} my {thing}?", f"To {verb} your {thing}, open Settings, choose {thing.title()} and "
       f"press {verb.title()}; it takes effect at once.")
      for verb in ("reset", "change", "export", "delete") for thing in ("password", "email address", "invoices")]


def _parallel_recipe(tmp_path, extra_steps: str = "", llm: str = "") -> object:
    rows = [{"q": q, "a": a} for q, a in QA]
    rows += [rows[0], {"q": rows[1]["q"] + "!", "a": rows[1]["a"]},  # duplicates
             {"q": "", "a": "empty query"}, {"q": "hi", "a": "a query too short for the filter"}]
    write(tmp_path / "qa.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    write(tmp_path / "bench" / "QABench" / "test.jsonl", json.dumps({"query": QA[5][0], "positive": QA[5][1]}) + "\n")
    write(tmp_path / "sts.tsv", "sentence1\tsentence2\tscore\n" + "".join(
        f"A man is playing a {x}.\tA person plays a {x}.\t4.{i}\n" for i, x in enumerate(["guitar", "flute", "drum"])))
    return load_recipe(write(tmp_path / "recipe.yaml", f"""
name: parallel
sources:
  - name: qa
    path: qa.jsonl
    adapter: qa
    columns: {{query: q, positive: a}}
  - name: sts
    path: sts.tsv
    adapter: sts
steps:
  - type: filter
    min_chars: 3
  - type: paraphrase                     # no max_records: runs on the workers, batch by batch
    fraction: 0.5
    max_tokens: 40
  - type: llm_negatives
    fraction: 0.4
    max_tokens: 80
{extra_steps}
{llm}
"""))


def test_dedup_decontaminate_and_synthesis_recipe_local_and_ray_agree(cluster, tmp_path):
    """The report's order: filter, synthesis, dedup, decontamination, mining. Every batch-wise step runs in Ray
    tasks, decontamination too although it follows dedup (a global step, on the driver)."""
    recipe = _parallel_recipe(tmp_path, extra_steps="""
  - type: dedup                          # global: on the driver, its output streamed back to the workers
    threshold: 0.8
  - type: decontaminate                  # batch by batch: on the workers
    bench_files: [bench/QABench]
  - type: filter                         # and again, after decontamination
    min_chars: 4
  - type: mine_negatives
    skip: 0
    depth: 6
    negatives: 2""")
    ours = build(recipe, tmp_path / "ray", executor=RayExecutor(), batch_rows=3)  # 5+ batches: work in parallel
    local = build(recipe, tmp_path / "local", batch_rows=3)
    _same_outputs(ours, local)
    m = ours.manifest
    assert m["dropped"]["0:filter"] == {"too_short:query": 1} and m["quarantined"]["reasons"] == {"empty_text": 1}
    assert m["dropped"]["3:dedup"]["exact_duplicate"] >= 1 and m["contamination"]["by_dataset"]["qa"] >= 1
    assert "0:filter+1:paraphrase+2:llm_negatives (ray tasks)" in m["timings_s"]
    assert "4:decontaminate+5:filter (ray tasks)" in m["timings_s"] and "3:dedup" in m["timings_s"]
    report = (ours.out_dir / "contamination.json").read_text()
    assert report == (local.out_dir / "contamination.json").read_text() and QA[5][0] in report
    # one cache for every worker: the local build after the Ray build sent nothing (two workers may both ask
    # for the same answer at once, for duplicate records in different batches: the Ray build's calls can exceed
    # the distinct requests the local build finds in the cache)
    for name, entry in local.manifest["synthesis"].items():
        assert entry["calls"] == 0 and 0 < entry["cache_hits"] <= m["synthesis"][name]["calls"], name
    again = build(recipe, tmp_path / "ray2", executor=RayExecutor(), batch_rows=3)
    assert all(e["calls"] == 0 for e in again.manifest["synthesis"].values())


def test_budget_holds_across_workers(cluster, tmp_path):
    recipe = _parallel_recipe(tmp_path, llm="""
llm:
  concurrency: 1
  max_budget_usd: 1.0
  price_per_million: [1000000, 1000000]   # $1 per token: the first answer spends the budget
  cache: answers.sqlite""")
    res = build(recipe, tmp_path / "out", executor=RayExecutor(window=4), batch_rows=3)
    m = res.manifest
    # requests, not attempts: a request retried (a timeout on a loaded machine) is one request sent again
    calls = sum(e["calls"] - e.get("retries", 0) for e in m["synthesis"].values())
    selected = sum(e["records_selected"] for e in m["synthesis"].values())
    assert m["llm_budget"]["reached"]
    # requests already in flight when the first answer spends the budget still finish: at most one per task in
    # flight (window 4 x concurrency 1; Ray may run more tasks than CPUs while one waits on the budget actor)
    assert 1 <= calls <= 4
    assert m["llm_budget"]["requests_not_sent"] == selected - calls
    spent = sum(e["cost_usd"] for e in m["synthesis"].values())  # every worker's spending, in one budget
    assert m["llm_budget"]["spent_usd"] == pytest.approx(spent) and spent >= 1.0
    assert m["counts"]["retrieval"]["qa"] >= len(QA)


def test_strict_mode_error_names_the_row_through_ray(cluster, tmp_path):
    recipe = _parallel_recipe(tmp_path)
    with pytest.raises(DataError, match=r"^source 'qa': qa.jsonl, row 14, field q: empty_text") as info:
        build(recipe, tmp_path / "out", strict=True, executor=RayExecutor())
    assert "ray::" not in str(info.value)  # the worker's error itself, not Ray's wrapper
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_cli_executor_flag(tmp_path):
    write(tmp_path / "in.csv", "question,answer\nq1?,a1\nq2?,a2\n")
    write(tmp_path / "r.yaml", "name: x\nsources: [{name: s, path: in.csv, adapter: qa}]\nsteps: [{type: filter}]\n")
    res = subprocess.run([sys.executable, "-m", "datakit.cli", "build", str(tmp_path / "r.yaml"), "--out",
                          str(tmp_path / "out"), "--executor", "ray", "--num-cpus", "2", "--quiet"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["executor"]["name"] == "ray" and m["counts"] == {"retrieval": {"s": 2}}
    res = subprocess.run([sys.executable, "-m", "datakit.cli", "build", str(tmp_path / "r.yaml"), "--out",
                          str(tmp_path / "o2"), "--executor", "spark"], capture_output=True, text=True)
    assert res.returncode == 2 and "unknown executor 'spark'" in res.stderr
    # steps over an existing output take the executor too, with the same result
    for executor in ("ray", "local"):
        res = subprocess.run([sys.executable, "-m", "datakit.cli", "dedup", str(tmp_path / "out"), "--out",
                              str(tmp_path / f"dedup-{executor}"), "--executor", executor], capture_output=True,
                             text=True)
        assert res.returncode == 0, res.stderr
    on_ray = json.loads((tmp_path / "dedup-ray" / "manifest.json").read_text())
    local = json.loads((tmp_path / "dedup-local" / "manifest.json").read_text())
    assert on_ray["executor"]["name"] == "ray" and local["executor"]["name"] == "local"
    assert [s["sha256"] for s in on_ray["shards"]] == [s["sha256"] for s in local["shards"]]


def test_mining_embeds_and_searches_in_ray_actors_and_picks_what_the_local_build_picks(cluster, tmp_path):
    data = ROOT / "recipes" / "data"

    def recipe(cache: str):
        return load_recipe(write(tmp_path / f"{cache}.yaml", f"""
            name: m
            allow_paths: [{data}]
            sources:
              - {{name: articles, path: {data / 'articles.jsonl'}, adapter: title_body}}
              - {{name: chats, path: {data / 'chats.jsonl'}, adapter: qa, columns: {{messages: messages}}}}
            steps:
              - {{type: mine_negatives, skip: 1, depth: 10, negatives: 3, cache_dir: {tmp_path / cache},
                 search_shard_rows: 8}}
        """))

    ours = build(recipe("ray-cache"), tmp_path / "ray", executor=RayExecutor())
    local = build(recipe("local-cache"), tmp_path / "local")
    _same_outputs(ours, local)
    mined = [s["report"] for s in ours.manifest["steps"]]
    assert mined[0]["encoded"] == local.manifest["steps"][0]["report"]["encoded"] > 20
    assert mined[0]["embedded_in"] == "ray actors"  # the driver never loaded the model
    assert local.manifest["steps"][0]["report"]["embedded_in"] == "this process"
    assert any((tmp_path / "ray-cache").rglob("part-*.keys.npy"))  # written by the actors into the shared cache
    # the pool's search in shards of 8 vectors, held by actors on the workers, their top-k merged on the driver
    assert mined[0]["search"]["in"] == "ray actors" and mined[0]["search"]["shards"] >= 3
    def untimed(search: dict) -> dict:  # timings differ from run to run; what was chosen and found does not
        cal = {k: v for k, v in search["calibration"].items() if not k.endswith("per_1000_queries")}
        return {**search, "in": "-", "calibration": cal}

    assert untimed(local.manifest["steps"][0]["report"]["search"]) == untimed(mined[0]["search"])


def test_dedup_signs_and_verifies_in_ray_tasks_and_decides_what_the_local_build_decides(cluster, tmp_path):
    """Dedup's signing, candidate partitions and verification run in Ray tasks (the candidates shuffled through
    the object store, clusters joined from the tasks' forests) on near duplicates, label conflicts, a pair kind and
    a bucket of 300 records (split by the next bands, not a star): records and report equal the local build's."""
    import random

    rng = random.Random(3)
    words = ("river mountain quiet engine silver market garden window yellow thunder paper rocket coffee music "
             "winter forest planet bridge candle ocean castle pencil orange shadow violin desert harbor").split()
    base = [" ".join(rng.choices(words, k=12)) for _ in range(150)]
    rows = []
    for i in range(500):
        text = base[i] if i < 150 else rng.choice(base)
        if i >= 150:
            w = text.split()
            w[rng.randrange(len(w))] = rng.choice(words)  # an edited copy
            text = " ".join(w)
        rows.append({"text": text, "label": "b" if i % 23 == 0 else "a"})
    rows += [{"text": f"the quarterly report for region {i} is attached to this message as a pdf", "label": "t"}
             for i in range(300)]  # one template: every record shares every band but one word
    write(tmp_path / "c.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write(tmp_path / "p.tsv", "sentence1\tsentence2\tscore\n" + "".join(
        f"{a}\t{b}\t{i % 5}.0\n" for i, (a, b) in enumerate(zip(base, base[1:] + base[:1]))) + "".join(
        f"{a} now\t{b}\t{i % 5}.0\n" for i, (a, b) in enumerate(zip(base[:40], base[1:41]))))
    recipe = load_recipe(write(tmp_path / "r.yaml", """
name: d
sources:
  - {name: c, path: c.jsonl, adapter: classification}
  - {name: p, path: p.tsv, adapter: sts}
steps:
  - {type: dedup, threshold: 0.8}
"""))
    ours = build(recipe, tmp_path / "ray", executor=RayExecutor(), batch_rows=64)
    local = build(recipe, tmp_path / "local", batch_rows=64)
    _same_outputs(ours, local)
    got, want = (json.loads((r.out_dir / "dedup.json").read_text()) for r in (ours, local))
    assert got.pop("tasks_in") == "ray tasks" and want.pop("tasks_in") == "this process"
    assert got.pop("worker_processes") >= 1 and want.pop("worker_processes") == 0  # the driver signed nothing
    phases = ["sign", "exact", "candidates_and_verify", "clusters", "write"]
    assert list(got.pop("seconds")) == list(want.pop("seconds")) == phases  # timed per phase, times differ
    assert got == want  # counts, candidates, verified pairs, sampled clusters and conflicts alike
    dropped = ours.manifest["dropped"]["0:dedup"]
    assert dropped["near_duplicate"] >= 300 and want["label_conflicts"] >= 1 and want["verified_pairs"] > 300
    assert ours.manifest["counts"]["classification"]["c"] < 400 and ours.manifest["counts"]["pair"]["p"] >= 150
