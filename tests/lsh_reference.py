"""Reference pieces of MinHash LSH that the library does not run, kept for the tests and benchmarks that compare
against them: datasketch's band rule, the signature's Jaccard estimate (the library verifies by exact Jaccard),
and candidate pairs listed in memory (the dedup step lists them from its spill with the same `run_pairs` and
`split_bucket`)."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from datakit.engines import minhash as mh


def exact_jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if (a or b) else 0.0


def jaccard_estimate(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Row-wise share of equal signature values (the MinHash estimate of Jaccard similarity)."""
    same = (sig_a == sig_b).mean(axis=-1)
    empty = (sig_a == mh.EMPTY).all(axis=-1) | (sig_b == mh.EMPTY).all(axis=-1)
    return np.where(empty, 0.0, same)


def _integrate(f, a: float, b: float, steps: int = 200) -> float:
    xs = np.linspace(a, b, steps + 1)
    ys = f(xs)
    return float(np.sum((ys[1:] + ys[:-1]) * 0.5 * np.diff(xs)))


@lru_cache(maxsize=64)
def optimal_bands(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false-positive and false-negative areas (datasketch's rule)."""
    best, best_err = (1, num_perm), math.inf
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = _integrate(lambda s: 1 - (1 - s ** rows) ** bands, 0.0, threshold)
            fn = _integrate(lambda s: (1 - s ** rows) ** bands, threshold, 1.0)
            err = fp * fp_weight + fn * fn_weight
            if err < best_err:
                best, best_err = (bands, rows), err
    return best


def bucket_pairs(bh: np.ndarray, docs: np.ndarray | None = None, cap: int = 256) -> np.ndarray:
    """Unique candidate pairs (a < b) of docs sharing a band bucket, in memory: `bh` (n, bands) band hashes of
    the docs `docs` (default 0..n-1). As the dedup step lists them from its spill: a bucket of up to `cap` docs
    yields every pair in it, a bigger one is split by the next bands (`split_bucket`), never linked as a star."""
    n, bands = bh.shape
    docs = np.arange(n, dtype=np.int64) if docs is None else np.asarray(docs, np.int64)
    row = np.empty(int(docs.max()) + 1 if n else 0, np.int64)
    row[docs] = np.arange(n)

    def hashes(band: int, members: np.ndarray) -> np.ndarray:
        return bh[row[members], band]

    out = [np.zeros((0, 2), np.int64)]
    for band in range(bands):
        order, starts, sizes = mh.runs_of(bh[:, band])
        out += mh.run_pairs(docs[order], starts, sizes, cap,
                            lambda _, group: mh.split_bucket((band + 1) % bands, band, bands, hashes, group, cap))
    return mh.unique_pairs(np.concatenate(out))


def verify_pairs(pairs: np.ndarray, sig_a: np.ndarray, sig_b: np.ndarray | None = None,
                 threshold: float = 0.8, chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """Keep the pairs whose estimated Jaccard (from the signatures) reaches `threshold`; (kept pairs, estimates)."""
    sig_b = sig_a if sig_b is None else sig_b
    keep, scores = [], []
    for lo in range(0, len(pairs), chunk):
        part = pairs[lo: lo + chunk]
        est = jaccard_estimate(np.asarray(sig_a[part[:, 0]]), np.asarray(sig_b[part[:, 1]]))
        ok = est >= threshold
        keep.append(part[ok])
        scores.append(est[ok])
    if not keep:
        return np.zeros((0, 2), np.int64), np.zeros(0)
    return np.concatenate(keep), np.concatenate(scores)
