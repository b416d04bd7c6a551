"""The same recipe on the local executor and on Ray with 1, 2, ... workers: rows/s and where the time goes.

Builds the sources of benchmarks/recipes/shared_corpus.yaml (10 sources from ../shared/data: CSV, TSV,
JSONL, Parquet, HF folders, DuckDB SQL), `--copies` times over (each copy a source of its own), through
`filter` and `decontaminate` against STS-B and WikiQA test (batch by batch: Ray tasks) and `dedup` (global:
the driver), with `datakit build`, and prints one
row per executor with the manifest's per-stage timings (the driver's view: time spent waiting for each stage).

    python benchmarks/scale_bench.py [--copies 3] [--workers 1 2]
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
        {"type": "dedup"}])  # global: the driver
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
            "records": sum(sum(v.values()) for v in m["counts"].values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    if not (ROOT.parent / "shared" / "data").exists():
        sys.exit("needs ../shared/data")
    path = recipe(args.copies)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(("local", None, run(path, Path(tmp) / "local", "local", None)))
            for w in args.workers:
                rows.append(("ray", w, run(path, Path(tmp) / f"ray{w}", "ray", w)))
    finally:
        path.unlink(missing_ok=True)
    base = rows[0][2]
    print(f"\nshared_corpus x{args.copies}: {base['rows']:,} rows read, {base['records']:,} records out; "
          f"{os.cpu_count()} CPU cores; filter + decontaminate + dedup\n")
    print("| executor | workers | build s | rows/s | rows/s per worker | process wall s (incl. Ray start) | same record count as local |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, w, r in rows:
        per = r["rows"] / r["build"] / (w or 1)
        print(f"| {name} | {w or 1} | {r['build']:.1f} | {r['rows'] / r['build']:,.0f} | {per:,.0f} | {r['wall']:.1f} | "
              f"{r['records'] == base['records']} |")
    print("\nwhere the time goes (s, driver's view):\n")
    stages = list(dict.fromkeys(k for _, _, r in rows for k in r["timings"]))
    print("| executor | workers | " + " | ".join(stages) + " |")
    print("|---|---:|" + "---:|" * len(stages))
    for name, w, r in rows:
        print(f"| {name} | {w or 1} | " + " | ".join(f"{r['timings'].get(s, 0):.2f}" for s in stages) + " |")


if __name__ == "__main__":
    main()
