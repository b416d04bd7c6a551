"""Top-k inner-product search over a pool whose vectors live on disk (a memmap), in bounded memory.

Two ways, chosen by pool size (`kind="auto"`):
- `flat` (pools up to `EXACT_LIMIT`): exact. The pool is scanned in shards of `shard_rows` vectors, a faiss
  flat index per shard, and the per-shard top-k merged. Memory: one shard and the query chunk's results.
- `ivfpq` (larger pools): faiss IVF-PQ holds only product-quantized codes in memory (`dim / 4` bytes and an
  8-byte id per vector, 104 bytes for a 384-dim model, instead of 1,536 for the vectors); it proposes
  `rerank` candidates per query, which are re-scored exactly from the memmap and cut to k. The similarities
  returned are therefore always exact; only which candidates are found is approximate (recall against exact
  search: `benchmarks/mine_scale_bench.py`).
`ivf` and `hnsw` keep the whole pool in memory (faiss IVF-Flat / HNSW), as before.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

IndexKind = Literal["auto", "flat", "ivfpq", "ivf", "hnsw"]
EXACT_LIMIT = 200_000  # auto: exact sharded search up to this many pool vectors, IVF-PQ beyond
SHARD_ROWS = 262_144  # pool vectors per exact-search shard (384 MiB of float32 at dim 384)
TRAIN_ROWS = 100_000  # IVF-PQ training sample
RERANK_QUERIES = 256  # queries re-scored at a time
PQ_MIN_ROWS = 20_000  # below this an `ivfpq` request searches exactly (faiss needs >= 256 per quantizer)


def _pq_bytes(dim: int) -> int:
    """Sub-quantizers for PQ: about dim/4 (one byte per 4 dimensions; dim/8 lost 5 points of recall@30 on
    clustered test data), a divisor of dim."""
    want = max(1, dim // 4)
    return next(m for m in range(want, 0, -1) if dim % m == 0)


def _merge(sims: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k best (score descending, ties by id)."""
    order = np.lexsort((ids, -sims), axis=1)[:, :k] if sims.shape[1] else np.zeros((len(sims), 0), np.int64)
    return np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)


class VectorSearch:
    """Built once over the pool's vectors (array or memmap); `search` a chunk of queries at a time."""

    def __init__(self, pool: np.ndarray, kind: IndexKind = "auto", shard_rows: int = SHARD_ROWS,
                 rerank: int = 200, nprobe: int = 64):
        self.pool, self.shard_rows, self.rerank = pool, shard_rows, rerank
        n, dim = pool.shape
        self.kind = ("flat" if n <= EXACT_LIMIT else "ivfpq") if kind == "auto" else kind
        if self.kind == "ivfpq" and n < PQ_MIN_ROWS:  # too few vectors to train the quantizers; small anyway
            self.kind = "flat"
        self.index = None
        if self.kind in ("ivf", "hnsw"):
            self.index = build_index(np.ascontiguousarray(pool, np.float32), self.kind)
        elif self.kind == "ivfpq":
            import faiss

            nlist = max(1, int(4 * np.sqrt(n)))
            self.index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, _pq_bytes(dim), 8,
                                          faiss.METRIC_INNER_PRODUCT)
            rows = np.sort(np.random.default_rng(0).choice(n, min(n, max(TRAIN_ROWS, nlist * 39)), replace=False))
            self.index.train(np.ascontiguousarray(pool[rows], np.float32))
            for start in range(0, n, shard_rows):  # added a shard at a time from the memmap
                self.index.add(np.ascontiguousarray(pool[start:start + shard_rows], np.float32))
            self.index.nprobe = min(nlist, nprobe)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, pool ids), each (len(queries), k), best first; id -1 where the pool has fewer."""
        queries = np.ascontiguousarray(queries, np.float32)
        k = min(k, len(self.pool))
        if self.kind in ("ivf", "hnsw"):
            return self.index.search(queries, k)
        if self.kind == "ivfpq":
            _, cand = self.index.search(queries, max(k, self.rerank))
            return self._exact_scores(queries, cand, k)
        best_s = np.zeros((len(queries), 0), np.float32)
        best_i = np.zeros((len(queries), 0), np.int64)
        for start in range(0, len(self.pool), self.shard_rows):
            shard = np.ascontiguousarray(self.pool[start:start + self.shard_rows], np.float32)
            s, i = build_index(shard, "flat").search(queries, min(k, len(shard)))
            if start == 0:  # one shard: faiss's own order, as a single flat index gives it
                best_s, best_i = s, i
            else:
                best_s, best_i = _merge(np.hstack([best_s, s]), np.hstack([best_i, i + start]), k)
        return best_s, best_i

    def _exact_scores(self, queries: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The candidates re-scored from the pool's vectors, RERANK_QUERIES queries at a time (so at most
        RERANK_QUERIES x rerank vectors are read into memory), cut to the k best."""
        sims = np.full(cand.shape, -np.inf, np.float32)
        for start in range(0, len(queries), RERANK_QUERIES):
            part = cand[start:start + RERANK_QUERIES]
            valid = part >= 0
            uniq, inverse = np.unique(part[valid], return_inverse=True)
            vectors = np.asarray(self.pool[uniq], np.float32)  # sorted ids: ascending reads from the memmap
            rows = np.nonzero(valid)[0]
            block = np.full(part.shape, -np.inf, np.float32)
            block[valid] = np.einsum("ij,ij->i", queries[start + rows], vectors[inverse])
            sims[start:start + RERANK_QUERIES] = block
        s, i = _merge(sims, np.where(cand >= 0, cand, np.iinfo(np.int64).max), k)
        return s, np.where(np.isfinite(s), i, -1)


def build_index(vectors: np.ndarray, kind: Literal["flat", "ivf", "hnsw"] = "flat", gpu: bool | None = None):
    """A faiss inner-product index over vectors in memory: exact (`flat`), IVF-Flat (`ivf`) or HNSW (`hnsw`);
    on GPU when present."""
    import faiss

    n, dim = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 128
    else:
        nlist = max(1, int(4 * np.sqrt(n)))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = vectors if n <= nlist * 64 else vectors[np.random.default_rng(0).choice(n, nlist * 64, replace=False)]
        index.train(sample)
        index.nprobe = min(nlist, 32)
    use_gpu = gpu if gpu is not None else (hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0)
    if use_gpu and kind != "hnsw":  # pragma: no cover - needs a GPU build of faiss
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(vectors)
    return index
