"""Top-k inner-product search over a pool whose vectors live on disk (a memmap), in bounded memory.

Two ways; `kind="auto"` picks by pool size, then `calibrate` measures on a sample of the real queries:
- `flat` (pools up to `EXACT_LIMIT`): exact. The pool is cut into shards of `SHARD_ROWS` vectors; each shard is
  searched with a faiss flat index and the per-shard top-k merged. Memory: one shard and the query chunk's results.
- `ivfpq` (larger pools): faiss IVF-PQ holds only product-quantized codes (`dim / 4` bytes and an 8-byte id per
  vector, 104 bytes for a 384-dim model, instead of 1,536 for the vectors). One quantizer is trained on a
  sample of the whole pool; each shard of `PQ_SHARD_ROWS` vectors gets its own index of codes from it, proposes
  `rerank` candidates per query, re-scores them exactly from the memmap and keeps its k best; the shards' top-k
  are merged. The similarities returned are therefore always exact; only which candidates are found is
  approximate (recall against exact search: `benchmarks/mine_scale_bench.py`). Under `auto`, `calibrate` raises
  nprobe until a sample of the real queries finds RECALL_TARGET of its exact top-k, and switches to exact
  search when that is the faster way there (a fixed nprobe lost recall as the pool, and so the list count, grew:
  0.955 at 85k, 0.911 at 300k, 0.889 at 1M pool texts).
Shards are held by a `TaskRunner` (`datakit.tasks`): in this process, or on Ray by actors spread over the
cluster's workers, each searching its shards (reading them from the memmap: on several nodes the build's
folder must be on shared storage); the merge is the same, so results do not depend on where shards were held.
`ivf` and `hnsw` keep the whole pool in memory (faiss IVF-Flat / HNSW), in this process, as before.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from datakit.tasks import LocalTasks

IndexKind = Literal["auto", "flat", "ivfpq", "ivf", "hnsw"]
EXACT_LIMIT = 200_000  # auto: exact sharded search up to this many pool vectors, IVF-PQ beyond
SHARD_ROWS = 262_144  # pool vectors per exact-search shard (384 MiB of float32 at dim 384)
PQ_SHARD_ROWS = 1 << 20  # pool vectors per IVF-PQ shard (its codes: ~100 MiB at dim 384)
TRAIN_ROWS = 100_000  # IVF-PQ training sample
RERANK_QUERIES = 256  # queries re-scored at a time
PQ_MIN_ROWS = 20_000  # below this an `ivfpq` request searches exactly (faiss needs >= 256 per quantizer)
# IVF lists an IVF-PQ query visits (of 4 * sqrt(n)). On real MiniLM embeddings (85k texts of ../shared/data,
# WikiQA and SciFact questions) 64 found 0.918 of the exact top 30, 128 0.955, 256 0.979; re-scoring more than
# 200 candidates gained nothing (`benchmarks/mine_scale_bench.py --real`). Synthetic clusters at 64: 0.995.
NPROBE = 128
# `auto` measures what it gets: on a sample of the real queries, recall@k of IVF-PQ against exact search, raising
# nprobe (doubling) until it reaches RECALL_TARGET; exact search wins when it is the faster way to that recall.
RECALL_TARGET = 0.95
CALIBRATION_QUERIES = 256


def _pq_bytes(dim: int) -> int:
    """Sub-quantizers for PQ: about dim/4 (one byte per 4 dimensions; dim/8 lost 5 points of recall@30 on
    clustered test data), a divisor of dim."""
    want = max(1, dim // 4)
    return next(m for m in range(want, 0, -1) if dim % m == 0)


def _merge(sims: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k best (score descending, ties by id)."""
    order = np.lexsort((ids, -sims), axis=1)[:, :k] if sims.shape[1] else np.zeros((len(sims), 0), np.int64)
    return np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)


@dataclass(frozen=True)
class ShardSpec:
    """Rows [start, stop) of the pool's `.npy` file, searched exactly (`trained` None) or through an IVF-PQ index
    of their codes built from `trained` (a serialized, trained, empty faiss index)."""

    path: str | None
    start: int
    stop: int
    trained: Any = None
    nprobe: int = NPROBE
    rerank: int = 200


class PoolShard:
    """One shard of the pool, held wherever the runner puts it; `search` gives its top-k with pool-wide ids."""

    def __init__(self, spec: ShardSpec, pool: np.ndarray | None = None):
        self.spec = spec
        pool = np.load(spec.path, mmap_mode="r") if pool is None else pool
        self.vectors = pool[spec.start: spec.stop]
        self.index = None
        if spec.trained is not None:
            import faiss

            self.index = faiss.deserialize_index(spec.trained)
            for lo in range(0, len(self.vectors), SHARD_ROWS):  # added a slice at a time from the memmap
                self.index.add(np.ascontiguousarray(self.vectors[lo: lo + SHARD_ROWS], np.float32))
            self.index.nprobe = min(self.index.nlist, spec.nprobe)

    def set_nprobe(self, nprobe: int) -> int:
        if self.index is not None:
            self.index.nprobe = min(self.index.nlist, nprobe)
            return int(self.index.nprobe)
        return 0

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self.vectors))
        if self.index is None:
            shard = np.ascontiguousarray(self.vectors, np.float32)
            s, i = build_index(shard, "flat").search(queries, k)
            return s, i + self.spec.start
        _, cand = self.index.search(queries, max(k, self.spec.rerank))
        s, i = self._exact_scores(queries, cand, k)
        return s, np.where(i >= 0, i + self.spec.start, -1)

    def _exact_scores(self, queries: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The candidates re-scored from the shard's vectors, RERANK_QUERIES queries at a time (so at most
        RERANK_QUERIES x rerank vectors are read into memory), cut to the k best."""
        sims = np.full(cand.shape, -np.inf, np.float32)
        for start in range(0, len(queries), RERANK_QUERIES):
            part = cand[start:start + RERANK_QUERIES]
            valid = part >= 0
            uniq, inverse = np.unique(part[valid], return_inverse=True)
            vectors = np.asarray(self.vectors[uniq], np.float32)  # sorted ids: ascending reads from the memmap
            rows = np.nonzero(valid)[0]
            block = np.full(part.shape, -np.inf, np.float32)
            block[valid] = np.einsum("ij,ij->i", queries[start + rows], vectors[inverse])
            sims[start:start + RERANK_QUERIES] = block
        s, i = _merge(sims, np.where(cand >= 0, cand, np.iinfo(np.int64).max), k)
        return s, np.where(np.isfinite(s), i, -1)


class VectorSearch:
    """Built once over the pool's vectors (array or memmap); `search` a chunk of queries at a time. With a
    `runner` other than the local one and a pool memory-mapped from an `.npy` file, the shards are held where
    the runner says (Ray actors)."""

    def __init__(self, pool: np.ndarray, kind: IndexKind = "auto", shard_rows: int | None = None,
                 rerank: int = 200, nprobe: int = NPROBE, runner: Any = None):
        self.pool, self.requested, self.runner = pool, kind, runner
        self.shard_rows, self.rerank, self.nprobe = shard_rows, rerank, nprobe
        n, dim = pool.shape
        self.kind = ("flat" if n <= EXACT_LIMIT else "ivfpq") if kind == "auto" else kind
        if self.kind == "ivfpq" and n < PQ_MIN_ROWS:  # too few vectors to train the quantizers; small anyway
            self.kind = "flat"
        self.index, self.shards, self.where, self.n_shards = None, None, "this process", 1
        self.nlist = 0
        if self.kind in ("ivf", "hnsw"):
            self.index = build_index(np.ascontiguousarray(pool, np.float32), self.kind)
            return
        self._hold(self._trained(pool, nprobe) if self.kind == "ivfpq" else None)

    def _hold(self, trained: Any) -> None:
        """Cut the pool into shards (exact, or IVF-PQ from `trained`) and have the runner hold them."""
        pool, n = self.pool, len(self.pool)
        rows = self.shard_rows or (SHARD_ROWS if trained is None else PQ_SHARD_ROWS)
        path = getattr(pool, "filename", None)
        specs = [ShardSpec(str(path) if path else None, lo, min(n, lo + rows), trained, self.nprobe, self.rerank)
                 for lo in range(0, n, rows)]
        runner = self.runner
        if runner is not None and runner.remote and path is not None and str(path).endswith(".npy"):
            self.shards = runner.hold(PoolShard, specs)  # each holder maps its rows of the file
        else:
            self.shards = LocalTasks().hold(lambda spec: PoolShard(spec, pool), specs)
        self.n_shards, self.where = len(specs), self.shards.where
        if trained is not None:
            self.nlist = max(1, int(4 * np.sqrt(n)))

    def calibrate(self, queries: np.ndarray, k: int, target: float = RECALL_TARGET) -> dict[str, Any]:
        """Measure this search's recall@k against exact search on `queries` (a sample of the real ones) and, for
        an `auto` IVF-PQ search, reach `target`: nprobe doubles until the sample's recall is at least `target`,
        and the search switches to exact shards when that is no faster than exact search (or never reaches it).
        Returns what was chosen and measured: the step report shows a user the recall of their own build."""
        import time

        queries = np.ascontiguousarray(queries, np.float32)
        k = min(k, len(self.pool))
        t0 = time.perf_counter()
        _, exact = exact_search(self.pool, queries, k)
        exact_s = (time.perf_counter() - t0) / max(len(queries), 1) * 1000
        report: dict[str, Any] = {"queries": len(queries), "k": k, "target": target,
                                  "exact_s_per_1000_queries": round(exact_s, 3)}
        if self.kind == "flat":
            return {**report, "index": "flat", "nprobe": None, "recall": 1.0, "tried": []}

        def measured() -> tuple[float, float]:
            t = time.perf_counter()
            _, ids = self.search(queries, k)
            seconds = (time.perf_counter() - t) / max(len(queries), 1) * 1000
            return recall_at(ids, exact), seconds

        if self.kind != "ivfpq" or self.requested != "auto":  # the user's own setting: measured, not changed
            recall, seconds = measured()
            return {**report, "index": self.kind, "nprobe": self.nprobe if self.kind == "ivfpq" else None,
                    "recall": round(recall, 4), "s_per_1000_queries": round(seconds, 3), "tried": []}
        tried = []
        nprobe = self.nprobe
        while True:
            nprobe = max(self.shards.call("set_nprobe", nprobe))
            recall, seconds = measured()
            tried.append({"nprobe": nprobe, "recall": round(recall, 4), "s_per_1000_queries": round(seconds, 3)})
            if recall >= target or nprobe >= self.nlist or seconds >= exact_s:
                break
            nprobe *= 2
        if recall >= target and seconds < exact_s:
            self.nprobe = nprobe
            return {**report, "index": "ivfpq", "nprobe": nprobe, "recall": round(recall, 4),
                    "s_per_1000_queries": round(seconds, 3), "tried": tried}
        self.shards.close()  # exact search is the faster (or the only) way to the target recall
        self.kind = "flat"
        self._hold(None)
        why = "slower than exact search at that recall" if recall >= target else f"short of {target}"
        return {**report, "index": "flat", "nprobe": None, "recall": 1.0, "tried": tried,
                "switched": f"IVF-PQ {why}: exact search"}

    @staticmethod
    def _trained(pool: np.ndarray, nprobe: int) -> np.ndarray:
        """An empty IVF-PQ index trained on a sample of the whole pool, serialized (every shard starts from it)."""
        import faiss

        n, dim = pool.shape
        nlist = max(1, int(4 * np.sqrt(n)))
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, _pq_bytes(dim), 8, faiss.METRIC_INNER_PRODUCT)
        rows = np.sort(np.random.default_rng(0).choice(n, min(n, max(TRAIN_ROWS, nlist * 39)), replace=False))
        index.train(np.ascontiguousarray(pool[rows], np.float32))
        return faiss.serialize_index(index)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, pool ids), each (len(queries), k), best first; id -1 where the pool has fewer."""
        queries = np.ascontiguousarray(queries, np.float32)
        k = min(k, len(self.pool))
        if self.index is not None:
            return self.index.search(queries, k)
        found = self.shards.call("search", queries, k)
        if len(found) == 1:  # one shard: its own order (faiss's, for an exact search)
            return found[0]
        return _merge(np.hstack([s for s, _ in found]), np.hstack([i for _, i in found]), k)

    def close(self) -> None:
        """Let the shards go (Ray: the actors holding them)."""
        if self.shards is not None:
            self.shards.close()
            self.shards = None


def exact_search(pool: np.ndarray, queries: np.ndarray, k: int,
                 shard_rows: int = SHARD_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of `queries` over a (memory-mapped) pool, a shard of `shard_rows` vectors at a time."""
    sims, ids = [], []
    for lo in range(0, len(pool), shard_rows):
        shard = np.ascontiguousarray(pool[lo: lo + shard_rows], np.float32)
        s, i = build_index(shard, "flat").search(queries, min(k, len(shard)))
        sims.append(s)
        ids.append(i + lo)
    if len(sims) == 1:
        return sims[0], ids[0]
    return _merge(np.hstack(sims), np.hstack(ids), k)


def recall_at(found: np.ndarray, exact: np.ndarray) -> float:
    """The share of the exact top-k ids (per query, -1 ignored) that `found` holds."""
    hits = total = 0
    for f, e in zip(found, exact):
        e = set(int(x) for x in e if x >= 0)
        hits += len(e & set(int(x) for x in f if x >= 0))
        total += len(e)
    return hits / total if total else 1.0


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
