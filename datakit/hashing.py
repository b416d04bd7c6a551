"""64-bit hashing of Arrow string arrays, the one definition every step keys on: exact dedup, MinHash tokens,
pack texts, the embedding cache, spill partitions and mining's pool ids.

`hash_strings`: FNV-1a over each string's UTF-8 bytes, mixed with its length by the splitmix64 finaliser (a null
hashes as ""); a numba loop over the array's buffers, strings spread over cores. Changing either function
changes every cache key and every manifest's dedup decisions: they are fixed.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a cheap, well-mixing bijection on uint64."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _MIX1
        x = (x ^ (x >> np.uint64(27))) * _MIX2
        return x ^ (x >> np.uint64(31))


def string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64, data uint8) of a string/binary array, honouring its slice offset."""
    arr = arr.cast(pa.large_binary()) if not pa.types.is_large_binary(arr.type) else arr
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
    data = arr.buffers()[2]
    return offsets, (np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8))


def hash_strings(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """64-bit FNV-1a of each string's UTF-8 bytes, then mixed with its length by splitmix64."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if len(arr) == 0:
        return np.zeros(0, np.uint64)
    offsets, data = string_buffers(pc.fill_null(arr, ""))
    return _hash_kernel()(data, offsets)


@lru_cache(maxsize=1)
def _hash_kernel():
    """Compiled on first use (numba costs ~1 s and ~70 MB at import, which a build that hashes nothing should
    not pay)."""
    import numba

    @numba.njit(parallel=True, cache=True, nogil=True)
    def hash_kernel(data, offsets):  # pragma: no cover - compiled
        n = offsets.shape[0] - 1
        out = np.empty(n, np.uint64)
        for t in numba.prange(n):
            x = np.uint64(0xCBF29CE484222325)
            for j in range(offsets[t], offsets[t + 1]):
                x = (x ^ np.uint64(data[j])) * np.uint64(0x100000001B3)
            x = x ^ np.uint64(offsets[t + 1] - offsets[t])
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            out[t] = x ^ (x >> np.uint64(31))
        return out

    return hash_kernel
