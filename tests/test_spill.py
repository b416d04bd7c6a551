"""datakit.engines.spill: per-record state on disk, read back one partition at a time."""
from __future__ import annotations

import numpy as np
import pytest

from datakit.engines.spill import Partitions, elect, read_partition


def _pairs(seed: int, n: int, distinct: int) -> tuple[np.ndarray, np.ndarray]:
    """n (position, key) pairs in position order, keys uniform 64-bit hashes drawn from `distinct` values (so many
    keys repeat, as exact duplicates and LSH buckets do)."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 2**64 - 1, size=distinct, dtype=np.uint64)
    return np.arange(n, dtype=np.int64), values[rng.integers(0, distinct, size=n)]


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("buffer_bytes", [1, 1000, None])  # a write per append, every few appends, once at close
def test_partitions_hold_every_pair_once_grouped_sorted_and_readable_from_the_folder(tmp_path, ordered, buffer_bytes):
    pos, keys = _pairs(0, 20_000, 3_000)
    parts = Partitions(tmp_path, "x", parts=16, ordered=ordered, buffer_bytes=buffer_bytes)
    for lo in range(0, len(pos), 1_700):  # batches of uneven size, positions ascending as a stream gives them
        parts.append(pos[lo: lo + 1_700], keys[lo: lo + 1_700])
    parts.close()
    got = list(parts.each())
    assert parts.n == len(pos) == sum(len(p) for p, _ in got)
    seen_keys: list[set] = []
    for (p, k), part in zip(got, range(16)):
        assert np.all(k[1:] >= k[:-1])  # sorted by key
        same = k[1:] == k[:-1]
        assert np.all(p[1:][same] > p[:-1][same])  # positions ascending within a key
        assert np.array_equal(keys[p], k)  # each position with its own key
        rp, rk = read_partition(tmp_path, "x", part)  # as another process reads it
        assert np.array_equal(rp, p) and np.array_equal(rk, k)
        seen_keys.append(set(k.tolist()))
    assert sorted(np.concatenate([p for p, _ in got]).tolist()) == pos.tolist()
    assert all(not (a & b) for i, a in enumerate(seen_keys) for b in seen_keys[i + 1:])  # a key in one partition
    if ordered:  # the partitions in turn are a sort by key
        every = np.concatenate([k for _, k in got])
        assert np.all(every[1:] >= every[:-1])


def test_elect_gives_every_position_its_groups_lowest_position_and_size(tmp_path):
    pos, keys = _pairs(1, 5_000, 700)
    parts = Partitions(tmp_path, "g", buffer_bytes=4096)
    parts.append(pos, keys)
    parts.close()
    elected, sizes = elect(parts, len(pos))
    first: dict[int, int] = {}
    count: dict[int, int] = {}
    for i, k in enumerate(keys.tolist()):
        first.setdefault(k, i)
        count[k] = count.get(k, 0) + 1
    assert elected.tolist() == [first[k] for k in keys.tolist()]
    assert sizes.tolist() == [count[k] for k in keys.tolist()]


def test_partitions_that_got_nothing_read_back_empty(tmp_path):
    parts = Partitions(tmp_path, "e", parts=4)
    parts.close()
    assert list(parts.each()) == []
    p, k = read_partition(tmp_path, "e", 3)
    assert len(p) == len(k) == 0


def test_key_order_equals_lexsort_by_key_then_position_on_either_path(monkeypatch):
    import datakit.engines.spill as spill

    pos, keys = _pairs(2, 30_000, 4_000)
    rng = np.random.default_rng(3)
    keys[rng.integers(0, len(keys), 300)] = np.uint64(2**64 - 1)  # the top digit used too
    expected = np.lexsort((pos, keys))
    assert np.array_equal(spill.key_order(keys, pos), expected)  # radix: positions come ascending per key
    shuffled = rng.permutation(len(pos))  # a key's positions out of order: caught, and lexsort's order
    assert np.array_equal(spill.key_order(keys[shuffled], pos[shuffled]), np.lexsort((pos[shuffled], keys[shuffled])))
    monkeypatch.setattr(spill, "RADIX_MIN", 10**9)
    assert np.array_equal(spill.key_order(keys, pos), expected)
