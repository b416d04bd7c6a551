"""The same recipe on the local executor and on Ray with 1, 2, ... workers: rows/s and where the time goes.

Builds the sources of benchmarks/recipes/shared_corpus.yaml (10 sources from ../shared/data: CSV, TSV,
JSONL, Parquet, HF folders, DuckDB SQL), `--copies` times over (each copy a source of its own), through
`filter` and `decontaminate` against STS-B and WikiQA test (batch by batch: Ray tasks) and `dedup` (global,
driven from the driver: signing, candidates and verification in Ray tasks), with `datakit build`, and prints one
row per executor with the manifest's per-stage timings (the driver's view: time spent waiting for each stage)
and the driver's peak memory (the manifest's `peak_rss_mib` and `peak_anon_mib`), for each corpus size in
`--copies`: the driver's own (anonymous) memory should not grow with the corpus (issue #28: within 1.2x from the
smallest to the largest; exit 1 on a miss).

    python benchmarks/scale_bench.py [--copies 1 3] [--workers 1 2 4]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "benchmarks" / "recipes" / "shared_corpus.yaml"


def recipe(copies: int) -> Path:
    data = yaml.safe_load(BASE.read_text())
    sources = []
    for c in range(copies):
        for src in data["sources"]:
            sources.append({**src, "name": f"{src['name']}_{c}" if copies > 1 else src["name"]})
    bench = ["../../../shared/data/stsb/sts-test.csv", "../../../shared/data/wikiqa/WikiQA-test.tsv"]
    data.update(name="scale", sources=sources, steps=[
        {"type": "filter", "min_chars": 3},  # batch by batch: Ray tasks
        {"type": "decontaminate", "bench_files": bench},  # batch by batch (MinHash signatures): Ray tasks
        {"type": "dedup"}])  # global: driven from the driver, its work in Ray tasks
    path = BASE.parent / ".scale-bench.yaml"  # next to the base recipe: its relative paths stay valid
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run(path: Path, out: Path, executor: str, workers: int | None) -> dict:
    cmd = [sys.executable, "-m", "datakit.cli", "build", str(path), "--out", str(out), "--force", "--quiet",
           "--executor", executor] + (["--num-cpus", str(workers)] if workers else [])
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    m = json.loads((out / "manifest.json").read_text())
    return {"wall": wall, "build": m["duration_s"], "rows": sum(m["rows_read"].values()), "timings": m["timings_s"],
            "records": sum(sum(v.values()) for v in m["counts"].values()),
            "peak_mib": m.get("peak_rss_mib", {}).get("build", 0.0),
            "anon_mib": m.get("peak_anon_mib", {}).get("build", 0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = ap.parse_args()
    if not (ROOT.parent / "shared" / "data").exists():
        sys.exit("needs ../shared/data")
    rows = []
    for copies in args.copies:
        path = recipe(copies)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                rows.append((copies, "local", None, run(path, Path(tmp) / "local", "local", None)))
                for w in args.workers:
                    rows.append((copies, "ray", w, run(path, Path(tmp) / f"ray{w}", "ray", w)))
        finally:
            path.unlink(missing_ok=True)
    print(f"\nshared_corpus x{args.copies}; {os.cpu_count()} CPU cores; filter + decontaminate + dedup\n")
    print("| copies | rows read | executor | workers | build s | rows/s | process wall s (incl. Ray start) "
          "| driver peak RSS MiB | driver peak anon MiB | same record count as local |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---|")
    base = {c: r for c, name, _, r in rows if name == "local"}
    for copies, name, w, r in rows:
        print(f"| {copies} | {r['rows']:,} | {name} | {w or 1} | {r['build']:.1f} | {r['rows'] / r['build']:,.0f} "
              f"| {r['wall']:.1f} | {r['peak_mib']:,.0f} | {r['anon_mib']:,.0f} | {r['records'] == base[copies]['records']} |")
    print("\nwhere the time goes (s, driver's view):\n")
    stages = list(dict.fromkeys(k for *_, r in rows for k in r["timings"]))
    print("| copies | executor | workers | " + " | ".join(stages) + " |")
    print("|---:|---|---:|" + "---:|" * len(stages))
    for copies, name, w, r in rows:
        print(f"| {copies} | {name} | {w or 1} | " + " | ".join(f"{r['timings'].get(s, 0):.2f}" for s in stages) + " |")
    small, large = min(args.copies), max(args.copies)
    growth = [next(r for c, n, ww, r in rows if c == large and n == "ray" and ww == w)["anon_mib"]
              / next(r for c, n, ww, r in rows if c == small and n == "ray" and ww == w)["anon_mib"]
              for w in args.workers]
    print(f"\ndriver peak anonymous memory (its own heap and arrays; RSS adds the object store's pages it read "
          f"batches from), x{large} corpus over x{small}, per worker count: "
          + ", ".join(f"{g:.2f}x" for g in growth) + (" (target <= 1.2x: met)" if max(growth) <= 1.2 else
                                                      " (target <= 1.2x: MISSED)"))
    if len(args.copies) > 1 and max(growth) > 1.2:
        sys.exit(1)


if __name__ == "__main__":
    main()
