"""Per-record state on disk, for global steps whose memory must not grow with the corpus.

- `Columns`: fixed-width columns (one raw file each), appended batch by batch, read back memory-mapped (random
  access touches only the pages it needs).
- `Partitions`: (position, key) pairs split by a hash of the key into partitions (extents of one file), so a
  group-by runs one partition at a time: memory of one partition (a sixty-fourth of the records), not of the
  corpus. `ordered` partitions split uniform hash keys by their top bits instead, so the partitions in turn are
  a sort by key (an external sort in the memory of one partition).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

PARTS = 64
BUFFER_BYTES = 16 << 20  # pairs a `Partitions` holds in memory before it writes them


class Columns:
    """Fixed-width per-record columns spilled to `folder`, one raw file per column."""

    def __init__(self, folder: Path, dtypes: dict[str, str]):
        self.folder, self.dtypes = folder, {k: np.dtype(v) for k, v in dtypes.items()}
        self.files = {k: open(folder / f"col-{k}.bin", "wb") for k in dtypes}
        self.n = 0

    def append(self, **arrays: np.ndarray) -> None:
        for name, values in arrays.items():
            np.ascontiguousarray(values, dtype=self.dtypes[name]).tofile(self.files[name])
        self.n += len(next(iter(arrays.values())))

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()

    def __getitem__(self, name: str) -> np.ndarray:
        """A column memory-mapped (read-only); an empty array when no record was appended."""
        if self.n == 0:
            return np.zeros(0, self.dtypes[name])
        return np.memmap(self.folder / f"col-{name}.bin", dtype=self.dtypes[name], mode="r", shape=(self.n,))


class Partitions:
    """(position, key) pairs, split by key hash into `parts` partitions: every key's positions land in one.
    `ordered`: split by the keys' top bits (`parts` a power of two; keys uniform hashes), so every key of
    partition p is below every key of partition p + 1.

    One file, `part-NAME.bin`, holds every partition: appended pairs wait in memory, sorted by partition, until
    `buffer_bytes` of them (then one write puts each partition's waiting pairs in one extent), and `close()`
    writes the extents' index, `part-NAME.index.npy` ((partition, first row, rows) per extent). Memory: the
    buffer and the index (24 bytes an extent; parts extents per flush), not the pairs. One file, not one per
    partition: a small build opened hundreds of files (0.3 ms each) for a few kilobytes each."""

    def __init__(self, folder: Path, name: str, parts: int = PARTS, ordered: bool = False,
                 buffer_bytes: int | None = None):
        if ordered and parts & (parts - 1):
            raise ValueError(f"ordered partitions need a power of two, not {parts}")
        self.folder, self.name, self.parts, self.ordered = folder, name, parts, ordered
        self.buffer_bytes = BUFFER_BYTES if buffer_bytes is None else buffer_bytes
        self.file = open(folder / f"part-{name}.bin", "wb")
        self.waiting: list[list[np.ndarray]] = [[] for _ in range(parts)]
        self.waiting_bytes = 0
        self.extents: list[tuple[int, int, int]] = []  # (partition, first row in the file, rows)
        self.written = 0  # rows in the file
        self.n = 0

    def append(self, positions: np.ndarray, keys: np.ndarray) -> None:
        keys = np.asarray(keys, np.uint64)
        self.n += len(keys)
        if self.ordered:
            which = (keys >> np.uint64(64 - (self.parts.bit_length() - 1))).astype(np.int64) if self.parts > 1 \
                else np.zeros(len(keys), np.int64)
        else:
            which = (_mix(keys) % np.uint64(self.parts)).astype(np.int64)
        # a stable sort of small integers is a radix sort (linear) when they are 16-bit
        order = np.argsort(which.astype(np.uint16) if self.parts <= 1 << 16 else which, kind="stable")
        bounds = np.searchsorted(which[order], np.arange(self.parts + 1))
        rows = np.empty(len(keys), dtype=ROW)
        rows["pos"], rows["key"] = positions, keys
        rows = rows[order]
        for p in range(self.parts):
            if bounds[p] < bounds[p + 1]:
                self.waiting[p].append(rows[bounds[p]: bounds[p + 1]])
        self.waiting_bytes += rows.nbytes
        if self.waiting_bytes >= self.buffer_bytes:
            self._flush()

    def _flush(self) -> None:
        for p, chunks in enumerate(self.waiting):
            if chunks:
                rows = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
                rows.tofile(self.file)
                self.extents.append((p, self.written, len(rows)))
                self.written += len(rows)
        self.waiting = [[] for _ in range(self.parts)]
        self.waiting_bytes = 0

    def close(self) -> None:
        if self.file.closed:
            return
        self._flush()
        self.file.close()
        np.save(self.folder / f"part-{self.name}.index.npy", np.asarray(self.extents, np.int64).reshape(-1, 3))

    def each(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One partition at a time (after `close()`): (positions, keys), sorted by key, positions ascending within
        a key."""
        index = np.asarray(self.extents, np.int64).reshape(-1, 3)
        for p in range(self.parts):
            pos, key = _read_extents(self.folder / f"part-{self.name}.bin", index[index[:, 0] == p])
            if len(pos):
                yield pos, key


ROW = np.dtype([("pos", "<i8"), ("key", "<u8")])


def read_partition(folder: Path, name: str, part: int) -> tuple[np.ndarray, np.ndarray]:
    """One partition of a closed `Partitions(folder, name)` (from any process that sees the folder):
    (positions, keys), sorted by key, positions ascending within a key."""
    index = np.load(folder / f"part-{name}.index.npy")
    return _read_extents(folder / f"part-{name}.bin", index[index[:, 0] == part])


def _read_extents(path: Path, extents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A partition's extents read (plain reads: mapped pages would stay in the reader's RSS) and sorted."""
    chunks = []
    if len(extents):
        with open(path, "rb") as fh:
            for _, first, count in extents.tolist():
                fh.seek(first * ROW.itemsize)
                chunks.append(np.fromfile(fh, dtype=ROW, count=count))
    rows = np.concatenate(chunks) if chunks else np.zeros(0, ROW)
    rows = rows[key_order(rows["key"], rows["pos"])]
    return rows["pos"], rows["key"]


def key_order(key: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """The order that sorts by key, then position (`np.lexsort((pos, key))`). A partition is appended in stream
    order, so a key's positions come ascending: a stable radix sort of the keys alone (numba, three times
    faster than lexsort on a 33k-row partition) gives that order; checked, and lexsort where it does not."""
    kernel = _radix_kernel() if len(key) >= RADIX_MIN else None
    if kernel is None:
        return np.lexsort((pos, key))
    order = kernel(np.ascontiguousarray(key, np.uint64))
    k, p = key[order], pos[order]
    if np.any((k[1:] == k[:-1]) & (p[1:] < p[:-1])):  # a key's positions were not in order
        return np.lexsort((pos, key))
    return order


RADIX_MIN = 4096  # smaller partitions: lexsort (no kernel to load for a small build)


@lru_cache(maxsize=1)
def _radix_kernel():
    """numba LSD radix sort (11-bit digits, a digit every key shares skipped): the stable order of uint64 keys."""
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency
        return None

    @numba.njit(cache=True, nogil=True)
    def radix_order(key):  # pragma: no cover - compiled
        n = key.shape[0]
        order, spare = np.arange(n), np.empty(n, np.int64)
        k, k_spare = key.copy(), np.empty(n, np.uint64)
        for shift in range(0, 64, 11):
            count = np.zeros(2049, np.int64)
            for i in range(n):
                count[((k[i] >> np.uint64(shift)) & np.uint64(2047)) + 1] += 1
            if count.max() == n:  # one digit for every key: nothing to move
                continue
            for d in range(2048):
                count[d + 1] += count[d]
            for i in range(n):
                d = (k[i] >> np.uint64(shift)) & np.uint64(2047)
                spare[count[d]] = order[i]
                k_spare[count[d]] = k[i]
                count[d] += 1
            order, spare = spare, order
            k, k_spare = k_spare, k
        return order

    return radix_order


def elect(partitions: Partitions, n: int, choose: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None
          = None, on_disk: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """For every position, the position its group (equal keys) elects, and the size of its group (both n-sized:
    int32 and uint32, eight bytes a record), computed one partition at a time. By default a group elects its
    lowest position; `choose(positions, run starts, run sizes)` returns each run's elected position instead.
    `on_disk`: both arrays are `.npy` memmaps beside the partitions (`elected-NAME.npy`, `sizes-NAME.npy`; other
    processes may read them), so they take no anonymous memory."""
    dtype = np.int32 if n < 2**31 else np.int64
    if on_disk:
        elected = np.lib.format.open_memmap(partitions.folder / f"elected-{partitions.name}.npy", "w+", dtype, (n,))
        sizes_out = np.lib.format.open_memmap(partitions.folder / f"sizes-{partitions.name}.npy", "w+", np.uint32, (n,))
    else:
        elected, sizes_out = np.empty(n, dtype), np.empty(n, np.uint32)
    for pos, key in partitions.each():
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        sizes = np.diff(np.r_[starts, len(key)])
        winners = pos[starts] if choose is None else choose(pos, starts, sizes)
        elected[pos] = np.repeat(winners, sizes)
        sizes_out[pos] = np.repeat(sizes, sizes)
    if on_disk:
        elected.flush()
        sizes_out.flush()
    return elected, sizes_out


def trim_heap() -> None:
    """Give the heap's free pages back to the system (glibc's `malloc_trim`; a no-op elsewhere). glibc raises its
    mmap threshold to the size of the largest block freed, up to 32 MB, so a step's temporaries (a partition's
    arrays, a third of a MB at 1M records) come from the heap afterwards and stay in RSS once freed: the Ray
    driver's anonymous memory grew 1.18x from 1M to 3M records through that alone, and 1.03x with a trim at
    each of dedup's phases. A fixed threshold (MALLOC_MMAP_THRESHOLD_) did the same but cost 12% of a build."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@lru_cache(maxsize=1)
def _libc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # pragma: no cover - not a glibc system
        return None


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (partition choice independent of how keys were made)."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x
