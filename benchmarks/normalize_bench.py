"""MinHash's text preparation on real text: `normalize` (NFKC, lower case, punctuation to spaces) and word tokens,
through datakit's numba loops (ASCII and the characters `minhash.unicode_tables` takes; other texts fall back to
Arrow) against Arrow's Unicode kernels alone (the path every non-ASCII text took before), in the same run.

    python benchmarks/normalize_bench.py

Corpora: SciFact's abstracts (scientific English: Greek letters, dashes, symbols), Chinese STS-B's sentences
(../shared/data), and dedup_bench's 40-80-word documents joined from real English sentences. Each row: the share
of texts the loops take, seconds (best of 3) for both paths and the speed-up. Exits 1 if the two paths differ
on any text (the outputs must be equal), or a corpus is missing.
"""
from __future__ import annotations

import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dedup_bench import long_docs  # noqa: E402

from datakit.engines import minhash as mh  # noqa: E402
from datakit.hashing import string_buffers

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def corpora() -> dict[str, list[str]]:
    with gzip.open(SHARED / "scifact" / "beir" / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        scifact = [json.loads(line)["text"] for line in fh]
    chinese = []
    for name in ("STS-B.train.data", "STS-B.test.data"):
        for line in (SHARED / "text2vec_zh" / "STS-B" / name).read_text(encoding="utf-8").splitlines():
            chinese += line.split("\t")[:2]
    return {"SciFact abstracts": scifact, "Chinese STS-B sentences": chinese,
            "40-80-word English docs": long_docs(50_000)[0]}


def best(fn, repeat: int = 3) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    missed = []
    mh.normalize(pa.array(["warm up, é"]))  # numba's kernels loaded before timing
    print("| corpus | texts | MB | taken by the loops | numba loops s | Arrow kernels s | speed-up | equal |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, texts in corpora().items():
        arr = pa.array(texts, pa.string())
        offsets, data = string_buffers(arr)
        taken = mh._byte_kernels().normalize(data, offsets, *mh.unicode_tables()[:2])[2].mean()
        fast_s, (norm, (h, d)) = best(lambda: (n := mh.normalize(arr), mh._word_tokens(n)))
        slow_s, (norm_ref, (h_ref, d_ref)) = best(lambda: (n := mh._normalize_arrow(arr), mh._word_tokens_arrow(n)))
        equal = norm.equals(norm_ref) and np.array_equal(h, h_ref) and np.array_equal(d, d_ref)
        if not equal:
            missed.append(f"{name}: the numba loops differ from Arrow's kernels")
        mb = pc.sum(pc.binary_length(arr)).as_py() / 1e6
        print(f"| {name} | {len(texts):,} | {mb:.1f} | {taken:.1%} | {fast_s:.3f} | {slow_s:.3f} | "
              f"{slow_s / fast_s:.1f}x | {'yes' if equal else 'NO'} |")
    print("\n" + ("every corpus equal on both paths" if not missed else "MISSED: " + "; ".join(missed)))
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
