"""Dedup at scale on one machine: `datakit build` with one `dedup` step over generated short documents.

Documents have 8-40 words drawn from a real vocabulary (the words of ../shared/data's STS-B, else a built-in
list), and 2% are near-copies of an earlier document (one word changed). The generator streams to disk (it keeps
a bounded reservoir of documents to copy from), so it is never what runs out of memory. Each size runs the real
CLI in its own process; wall time, peak RSS and peak anonymous memory (RssAnon: what cannot be paged back to a
file) of the process tree are sampled every 50 ms.

    python benchmarks/dedup_scale.py --sizes 1000000,3000000,10000000
    python benchmarks/dedup_scale.py --sizes 1000000,3000000 --executors local,ray --num-cpus 2

With `--executors ray` the build runs on a local Ray cluster (`--num-cpus` workers): dedup signs, lists candidates
and verifies in Ray tasks; the tree's peak then counts Ray's processes too. The table adds the driver's own peaks
from its manifest: `peak_rss_mib` (RSS, which on Ray includes the pages of the object store's shared arena the
driver touched reading batches) and `peak_anon_mib` (its heap and arrays).

Targets (issue #28), checked (exit 1 on a miss): peak RSS at 3M within 1.2x of 1M (local); on Ray the driver's
peak RSS and peak anonymous memory at 3M within 1.2x of 1M each; 10M documents in under 15 minutes with peak RSS under 4 GiB
(local); the same records dropped on every executor.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import peaks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FALLBACK = ("the a of and to in is was for on that with as by at from his her it an are were be this which or had "
            "not but have they their one all new more been has who would can will two other first time year people "
            "city state world school house water market music film game team power light river road train bank "
            "card money phone night music song book story field paper system model data study report").split()


def vocabulary() -> list[str]:
    if (SHARED / "stsb" / "sts-train.csv").exists():
        words = re.findall(r"[a-z]+", (SHARED / "stsb" / "sts-train.csv").read_text(encoding="utf-8").lower())
        return sorted(set(words))
    return FALLBACK


def generate(path: Path, n: int, seed: int = 0, copies: float = 0.02) -> int:
    """n documents as JSON lines; returns how many are planted near-copies."""
    rng = random.Random(seed)
    vocab = vocabulary()
    reservoir: list[list[str]] = []
    planted = 0
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            if reservoir and rng.random() < copies:
                words = list(rng.choice(reservoir))
                words[rng.randrange(len(words))] = rng.choice(vocab)
                planted += 1
            else:
                words = rng.choices(vocab, k=rng.randint(8, 40))
                if len(reservoir) < 10_000:
                    reservoir.append(words)
                else:
                    reservoir[rng.randrange(10_000)] = words
            fh.write(json.dumps({"text": " ".join(words), "label": "x"}) + "\n")
    return planted


def run(n: int, work: Path, executors: list[str], num_cpus: int) -> list[dict]:
    docs = work / f"docs-{n}.jsonl"
    planted = generate(docs, n)
    recipe = work / f"recipe-{n}.yaml"
    recipe.write_text(f"name: scale\nsources: [{{name: docs, path: {docs.name}, adapter: classification}}]\n"
                      "steps: [{type: dedup, threshold: 0.8}]\n")
    datakit = str(Path(sys.executable).parent / "datakit")
    rows = []
    for executor in executors:
        out = work / f"out-{n}-{executor}"
        extra = ["--executor", "ray", "--num-cpus", str(num_cpus)] if executor == "ray" else []
        secs, rss, anon = peaks([datakit, "build", str(recipe), "--out", str(out), "--force", "-q", *extra])
        m = json.loads((out / "manifest.json").read_text())
        d = m["dropped"]["0:dedup"]
        rows.append({"docs": n, "executor": executor, "seconds": secs, "rss": rss, "anon": anon,
                     "driver_mib": m.get("peak_rss_mib", {}).get("build", 0.0),
                     "driver_anon_mib": m.get("peak_anon_mib", {}).get("build", 0.0), "exact": d.get("exact_duplicate", 0),
                     "near": d.get("near_duplicate", 0), "planted": planted, "timings": m.get("timings_s", {})})
        print(f"  {n:,} {executor}: {secs:.0f} s, peak RSS {rss / 2**30:.2f} GiB", file=sys.stderr, flush=True)
    docs.unlink()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,3000000")
    ap.add_argument("--executors", default="local", help="comma-separated: local, ray")
    ap.add_argument("--num-cpus", type=int, default=2, help="Ray's local workers")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="dedup_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    executors = args.executors.split(",")
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        rows += run(n, work, executors, args.num_cpus)
    print("\n| documents | executor | wall s | dedup s | peak RSS GiB (tree) | peak anon GiB (tree) | driver peak RSS MiB "
          "| driver peak anon MiB | exact dropped | near dropped | planted |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['docs']:,} | {r['executor']} | {r['seconds']:.0f} | {r['timings'].get('0:dedup', 0):.0f} | "
              f"{r['rss'] / 2**30:.2f} | {r['anon'] / 2**30:.2f} | {r['driver_mib']:,.0f} | {r['driver_anon_mib']:,.0f} | "
              f"{r['exact']:,} | {r['near']:,} | {r['planted']:,} |")
    missed = []
    for executor in executors:
        by = {r["docs"]: r for r in rows if r["executor"] == executor}
        for peak, what in ([("rss", "RSS")] if executor == "local" else
                           [("driver_mib", "driver RSS"), ("driver_anon_mib", "driver anonymous memory")]):
            if 1_000_000 in by and 3_000_000 in by and by[3_000_000][peak] > 1.2 * by[1_000_000][peak]:
                missed.append(f"{executor}: peak {what} at 3M more than 1.2x of 1M")
        if executor == "local" and 10_000_000 in by and (by[10_000_000]["seconds"] > 900
                                                          or by[10_000_000]["rss"] > 4 * 2**30):
            missed.append("10M: over 15 minutes or over 4 GiB")
    for n in {r["docs"] for r in rows}:
        if len({(r["exact"], r["near"]) for r in rows if r["docs"] == n}) > 1:
            missed.append(f"{n:,}: executors dropped different records")
    if missed:
        sys.exit("missed: " + "; ".join(missed))


if __name__ == "__main__":
    main()
