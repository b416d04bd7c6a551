"""Benchmark packs at scale: `datakit bench build` over a generated BEIR-style corpus, then a build whose
`decontaminate` step checks a training source against that pack.

Documents have 40-120 words drawn from a real vocabulary (the words of ../shared/data's STS-B, else a built-in
list); one in twenty ends with a shared footer (boilerplate the pack must set aside). The generator streams to
disk. The training source has 20,000 texts, of which 100 are exact copies of pack documents and 100 copies with
one word changed; the rest are fresh. Each command runs in its own process; wall time, peak RSS and peak
anonymous memory of the process tree are sampled every 50 ms.

    python benchmarks/pack_scale.py --sizes 300000,900000

The pack is built a chunk of texts at a time, with its sorted arrays made through ordered partitions on disk,
and read memory-mapped by the step: neither command holds the pack in memory. What a process cannot give back is
its anonymous memory; its RSS also counts the pages of the memory-mapped pack it touched, which the kernel drops
under pressure (so a pack larger than RAM still runs), and which grow with the pack by design.
Targets (issue #28), checked (exit 1 on a miss): at 3x the documents, peak anonymous memory of `bench build` and
of the decontaminating build within 1.2x of the smaller size's; every planted copy dropped, and nothing else.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import peaks  # noqa: E402
from dedup_scale import vocabulary  # noqa: E402

from datakit.manifest import load  # noqa: E402

FOOTER = "follow us for the latest news and updates from our newsroom delivered to your inbox every single morning"
PLANTED = 100  # exact copies, and as many near copies


def generate(folder: Path, n: int, seed: int = 0) -> list[str]:
    """A BEIR folder of n documents (and a few queries); returns 2 x PLANTED documents to copy from."""
    rng = random.Random(seed)
    vocab = vocabulary()
    folder.mkdir(parents=True, exist_ok=True)
    chosen = set(rng.sample(range(n), 2 * PLANTED))
    kept = []
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for i in range(n):
            text = " ".join(rng.choices(vocab, k=rng.randint(40, 120)))
            if i % 20 == 0:
                text += " " + FOOTER
            if i in chosen:
                kept.append(text)
            fh.write(json.dumps({"_id": f"d{i}", "title": "", "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as fh:
        for i in range(1000):
            fh.write(json.dumps({"_id": f"q{i}", "text": " ".join(rng.choices(vocab, k=8))}) + "\n")
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{i}\t1\n" for i in range(1000)))
    return kept


def training(path: Path, copies: list[str], seed: int = 1) -> None:
    rng = random.Random(seed)
    vocab = vocabulary()
    texts = [" ".join(rng.choices(vocab, k=rng.randint(20, 60))) for _ in range(20_000 - 2 * PLANTED)]
    for k, text in enumerate(copies):
        words = text.split()
        if k % 2:
            words[len(words) // 2] = "zzyzx"
        texts.insert(rng.randrange(len(texts) + 1), " ".join(words))
    path.write_text("".join(json.dumps({"text": t, "label": "x"}) + "\n" for t in texts), encoding="utf-8")


def run(n: int, work: Path) -> dict:
    bench = work / f"bench-{n}" / "SynthBEIR"
    copies = generate(bench, n)
    training(work / "train.jsonl", copies)
    datakit = str(Path(sys.executable).parent / "datakit")
    pack = work / f"pack-{n}"
    size = (bench / "corpus.jsonl").stat().st_size
    pack_s, pack_rss, pack_anon = peaks([datakit, "bench", "build", "--from-files", str(bench), "--out", str(pack)])
    meta = json.loads((pack / "pack.json").read_text())
    recipe = work / f"recipe-{n}.yaml"
    recipe.write_text(f"name: decon\nsources: [{{name: train, path: train.jsonl, adapter: classification}}]\n"
                      f"steps: [{{type: decontaminate, packs: [{pack.name}]}}]\n")
    out = work / f"out-{n}"
    dec_s, dec_rss, dec_anon = peaks([datakit, "build", str(recipe), "--out", str(out), "--force", "-q"])
    dropped = sum(load(out).step_dropped(0).values())
    for f in bench.glob("*.jsonl"):
        f.unlink()
    print(f"  {n:,}: pack {pack_s:.0f} s, decontaminate {dec_s:.0f} s", file=sys.stderr, flush=True)
    return {"docs": n, "mb": size / 2**20, "texts": meta["n_texts"], "boilerplate": meta["boilerplate_ngrams"],
            "pack_s": pack_s, "pack_rss": pack_rss, "pack_anon": pack_anon, "dec_s": dec_s, "dec_rss": dec_rss,
            "dec_anon": dec_anon, "dropped": dropped,
            "pack_mb": sum(f.stat().st_size for f in pack.iterdir()) / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="300000,900000")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="pack_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = [run(int(x), work) for x in args.sizes.split(",")]
    gib = 2**30
    print("\n| documents | corpus MB | pack texts | pack MB | boilerplate n-grams | bench build s | peak RSS GiB | "
          "peak anon GiB | decontaminate build s | peak RSS GiB | peak anon GiB | dropped (of 200 planted) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['docs']:,} | {r['mb']:,.0f} | {r['texts']:,} | {r['pack_mb']:,.0f} | {r['boilerplate']:,} | "
              f"{r['pack_s']:.0f} | {r['pack_rss'] / gib:.2f} | {r['pack_anon'] / gib:.2f} | {r['dec_s']:.0f} | "
              f"{r['dec_rss'] / gib:.2f} | {r['dec_anon'] / gib:.2f} | {r['dropped']} |")
    missed = [f"{r['docs']:,}: dropped {r['dropped']}, planted {2 * PLANTED}" for r in rows
              if r["dropped"] != 2 * PLANTED]
    small, big = rows[0], rows[-1]
    if big["docs"] >= 3 * small["docs"]:
        for key, what in (("pack_anon", "bench build"), ("dec_anon", "decontaminating build")):
            if big[key] > 1.2 * small[key]:
                missed.append(f"{what}: peak anonymous memory at {big['docs']:,} documents more than 1.2x of "
                              f"{small['docs']:,}")
    if missed:
        sys.exit("missed: " + "; ".join(missed))


if __name__ == "__main__":
    main()
