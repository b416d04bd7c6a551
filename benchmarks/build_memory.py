"""Build throughput and peak memory on a large JSONL source.

Generates a QA JSONL file of the requested size (text drawn from ../shared/data when present,
else synthetic words), then measures, each in a fresh process:

- `datakit build` of a one-source recipe (qa adapter + filter step -> Arrow shards + manifest);
- the usual hand-made alternative: `datasets.load_dataset("json")` (reads the file into an
  Arrow cache) followed by `.map` to the retrieval columns.

Prints rows/s, wall time and peak RSS (the process and its children) as a table. Target (issue #2): datakit's
peak under 2 GiB for a 1 GB source; the script exits 1 when it is missed.

    python benchmarks/build_memory.py --gb 1.0
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import measure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def _vocabulary() -> list[str]:
    words: list[str] = []
    stsb = SHARED / "stsb" / "sts-train.csv"
    if stsb.exists():
        for line in stsb.read_text(encoding="utf-8").splitlines():
            words += " ".join(line.split("\t")[5:7]).split()
    return words or [f"w{i}" for i in range(5000)]


def make_jsonl(path: Path, gigabytes: float, seed: int = 0) -> int:
    rng = random.Random(seed)
    vocab = _vocabulary()
    target = int(gigabytes * (1 << 30))
    rows = 0
    with open(path, "w", encoding="utf-8") as fh:
        written = 0
        while written < target:
            q = " ".join(rng.choices(vocab, k=rng.randint(5, 15))) + "?"
            a = " ".join(rng.choices(vocab, k=rng.randint(20, 60))) + "."
            line = json.dumps({"question": q, "answer": a, "source": "bench", "id": rows}) + "\n"
            fh.write(line)
            written += len(line)
            rows += 1
    return rows


HF_SCRIPT = """
import sys, datasets
datasets.disable_progress_bars()
ds = datasets.load_dataset("json", data_files=sys.argv[1], split="train", cache_dir=sys.argv[2])
ds = ds.map(lambda b: {"query": b["question"], "positive": b["answer"]}, batched=True, batch_size=50_000,
            remove_columns=ds.column_names)
print(ds.num_rows)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0, help="size of the generated JSONL")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--skip-peer", action="store_true")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="build_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "qa.jsonl"
    t0 = time.time()
    rows = make_jsonl(src, args.gb)
    size = src.stat().st_size
    print(f"generated {rows:,} rows, {size / (1 << 30):.2f} GiB in {time.time() - t0:.0f}s -> {src}", flush=True)
    (work / "recipe.yaml").write_text(
        "name: bench\nsources:\n  - {name: qa, path: qa.jsonl, adapter: qa}\n"
        "steps:\n  - {type: filter, min_chars: 3}\noutput: {shard_rows: 200000}\n")

    results = []
    datakit = str(Path(sys.executable).parent / "datakit")
    secs, peak, _ = measure([datakit, "build", str(work / "recipe.yaml"), "--out", str(work / "out"), "--force", "-q"])
    from datakit.manifest import load

    counts = load(work / "out").counts
    assert counts["retrieval"]["qa"] == rows, counts
    results.append(("datakit build (qa adapter, filter, shards)", secs, peak))
    if not args.skip_peer:
        secs, peak, out = measure([sys.executable, "-c", HF_SCRIPT, str(src), str(work / "hf_cache")])
        assert int(out.strip().splitlines()[-1]) == rows
        results.append(("datasets.load_dataset('json') + map", secs, peak))

    print(f"\ninput: {size / (1 << 30):.2f} GiB JSONL, {rows:,} rows; machine: {os.cpu_count()} cores")
    print(f"| {'pipeline':<44} | {'wall s':>7} | {'rows/s':>10} | {'MB/s':>6} | {'peak RSS MiB':>12} |")
    print(f"|{'-' * 46}|{'-' * 9}|{'-' * 12}|{'-' * 8}|{'-' * 14}|")
    for name, secs, peak in results:
        print(f"| {name:<44} | {secs:7.1f} | {rows / secs:10,.0f} | {size / secs / 2**20:6.1f} | {peak / 2**20:12,.0f} |")
    ours = results[0][2] / 2**30
    print(f"\ntarget (datakit's peak RSS < 2 GiB): {'met' if ours < 2 else 'MISSED'} ({ours:.2f} GiB)")
    if ours >= 2:
        sys.exit(1)


if __name__ == "__main__":
    main()
