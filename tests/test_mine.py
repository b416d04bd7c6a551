import json

import numpy as np
import pytest

from datakit.engines.embed import Embedder
from datakit.engines.vectorsearch import VectorSearch, build_index
from datakit.manifest import read_shards
from datakit.steps.mine import llm_quota
from tests.conftest import ROOT, build_yaml, write

DATA = ROOT / "recipes" / "data"

SOLAR = [
    "Solar cells are made of semiconductor layers; when photons hit them they free electrons, and the electric "
    "field at the junction drives those electrons as a current.",
    "A photovoltaic panel turns sunlight directly into direct current, which an inverter converts to alternating "
    "current for the home.",
]
PARAPHRASE = ("Photovoltaic panels convert sunlight straight into direct current electricity, and an inverter "
              "then turns it into alternating current for household use.")


def _recipe(tmp_path, step: str) -> str:
    rows = [{"query": "how do solar panels generate electricity", "pos": SOLAR, "neg": []}]
    write(tmp_path / "solar.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write(tmp_path / "extra.jsonl", json.dumps({"text": PARAPHRASE}) + "\n")
    return f"""
        name: m
        allow_paths: [{DATA}]
        sources:
          - {{name: articles, path: {DATA / 'articles.jsonl'}, adapter: title_body}}
          - {{name: chats, path: {DATA / 'chats.jsonl'}, adapter: qa, columns: {{messages: messages}}}}
          - {{name: solar, path: solar.jsonl, adapter: retrieval, columns: {{positive: pos, negatives: neg}}}}
        steps:
          - {step}
    """


def _solar(result):
    return [r for r in read_shards(result.out_dir, "retrieval").to_pylist() if r["dataset"] == "solar"]


def test_known_positives_never_become_negatives_and_the_guard_drops_unlabelled_paraphrases(tmp_path):
    step = ("{type: mine_negatives, skip: 0, depth: 12, negatives: 8, guard: GUARD, extra_pool: [extra.jsonl], "
            f"cache_dir: {tmp_path / 'cache'}}}")
    unguarded = build_yaml(tmp_path, _recipe(tmp_path, step.replace("GUARD", "none")))
    recs = _solar(unguarded)
    assert len(recs) == 2
    for r in recs:
        assert not set(r["negatives"]) & set(SOLAR)  # the query's other labelled positive is excluded too
        assert set(r["negative_origins"]) == {"mined"} and len(r["negatives"]) == 8
    assert any(PARAPHRASE in r["negatives"] for r in recs)  # without the guard the paraphrase is a "negative"
    guarded = build_yaml(tmp_path, _recipe(tmp_path, step.replace("GUARD", "perc_pos")), force=True)
    assert not any(PARAPHRASE in r["negatives"] for r in _solar(guarded))
    report = guarded.manifest["steps"][0]["report"]
    assert report["by_dataset"]["solar"]["dropped_known_positive"] >= 2
    assert report["by_dataset"]["solar"]["dropped_guard"] >= 1


def test_rank_window_k_cache_and_manifest(tmp_path):
    step = f"{{type: mine_negatives, skip: 2, depth: 6, negatives: 3, guard: none, cache_dir: {tmp_path / 'cache'}}}"
    first = build_yaml(tmp_path, _recipe(tmp_path, step))
    report = first.manifest["steps"][0]["report"]
    assert report["encoded"] > 0 and report["cache_hits"] == 0
    records = read_shards(first.out_dir, "retrieval").to_pylist()
    pool = list(dict.fromkeys(r["positive"] for r in records))
    emb = Embedder(cache_dir=tmp_path / "cache")
    pv, qv = emb.encode(pool), emb.encode([r["query"] for r in records])
    order = np.argsort(-(qv @ pv.T), axis=1)
    for r, ranks in zip(records, order):
        window = {pool[j] for j in ranks[2:6]}
        assert len(r["negatives"]) <= 3 and set(r["negatives"]) <= window
    assert sum(len(r["negatives"]) == 3 for r in records) >= len(records) * 0.9
    again = build_yaml(tmp_path, _recipe(tmp_path, step), force=True)
    report = again.manifest["steps"][0]["report"]
    assert report["encoded"] == 0 and report["cache_hits"] > 0  # nothing re-embedded
    assert read_shards(again.out_dir, "retrieval").to_pylist() == records  # deterministic
    mix = again.manifest["negatives"]["articles"]
    arts = [r for r in records if r["dataset"] == "articles"]
    assert mix == {"records": len(arts), "given": 0, "mined": sum(len(r["negatives"]) for r in arts), "llm": 0,
                   "records_short": sum(len(r["negatives"]) < 3 for r in arts)}
    sim = again.manifest["mining"]["similarity"]["articles"]
    assert sim["query_positive"]["mean"] > sim["query_mined_negative"]["mean"]


def test_llm_share_leaves_room_for_llm_negatives(tmp_path):
    quota = llm_quota([f"d:{i}" for i in range(10_000)], target=4, share=0.3, seed=0)
    assert abs(quota.mean() - 1.2) < 0.03 and set(quota.tolist()) == {1, 2}
    step = f"{{type: mine_negatives, skip: 0, depth: 20, negatives: 4, llm_share: 0.3, cache_dir: {tmp_path / 'c'}}}"
    result = build_yaml(tmp_path, _recipe(tmp_path, step))
    counts = [len(r["negatives"]) for r in read_shards(result.out_dir, "retrieval").to_pylist()]
    assert set(counts) <= {2, 3} and 2.6 < np.mean(counts) < 3.0


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_recall_close_to_exact_on_100k(kind):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(200, 64)).astype(np.float32)
    x = centers[rng.integers(0, 200, 100_000)] + 0.6 * rng.normal(size=(100_000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.choice(100_000, 500, replace=False)] + 0.05 * rng.normal(size=(500, 64)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    _, exact = build_index(x, "flat").search(q, 10)
    _, approx = build_index(x, kind).search(q, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.98, recall


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(100, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = centers[rng.integers(0, 100, n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_sharded_exact_search_equals_one_flat_index_and_ivfpq_rescores_exactly(tmp_path):
    pool = np.lib.format.open_memmap(tmp_path / "pool.npy", mode="w+", dtype=np.float32, shape=(30_000, 64))
    pool[:] = _clustered(30_000, 64, 1)
    q = _clustered(300, 64, 2)
    exact_s, exact_i = build_index(np.asarray(pool), "flat").search(q, 30)
    sharded_s, sharded_i = VectorSearch(pool, "flat", shard_rows=7_000).search(q, 30)
    assert np.array_equal(sharded_s, exact_s)  # the same scores; exact ties may come in another order
    assert all(set(a) == set(e) for a, e in zip(sharded_i, exact_i))
    pq_s, pq_i = VectorSearch(pool, "ivfpq").search(q, 30)
    recall = np.mean([len(set(a) & set(e)) / 30 for a, e in zip(pq_i, exact_i)])
    assert recall >= 0.95, recall
    rows = np.repeat(np.arange(len(q)), 30)
    assert np.allclose(pq_s.reshape(-1), np.einsum("ij,ij->i", q[rows], pool[pq_i.reshape(-1)]), atol=1e-5)
    assert np.all(np.diff(pq_s, axis=1) <= 0)  # best first


def test_embedding_cache_reads_parts_from_disk_and_ignores_half_written_ones(tmp_path):
    emb = Embedder(cache_dir=tmp_path)
    texts = ["a solar panel", "a wind turbine", "a heat pump"]
    first = emb.encode(texts)
    folder = emb.cache.folder
    assert sorted(p.name.split(".", 1)[1] for p in folder.glob("part-*")) == ["keys.npy", "vectors.npy"]
    (folder / ".tmp-part-x.vectors.npy").write_bytes(b"half")  # a killed writer's leftovers
    np.save(folder / "part-0-orphan.vectors.npy", np.ones((2, first.shape[1]), np.float32))  # keys never renamed
    again = Embedder(cache_dir=tmp_path)
    assert len(again.cache.keys) == 3 and all(isinstance(p, np.memmap) for p in again.cache._parts)
    assert np.array_equal(again.encode(texts), first) and again.encoded == 0
    out = again.encode_into(tmp_path / "v.npy", [texts[:2], texts[2:]], 3)
    assert isinstance(out, np.memmap) and np.array_equal(np.asarray(out), first)


def test_mining_in_small_chunks_decides_as_in_one(tmp_path, monkeypatch):
    """The bounded path (records, pool and embeddings a chunk at a time) equals mining everything at once."""
    import datakit.steps.mine as mine

    step = (f"{{type: mine_negatives, skip: 1, depth: 8, negatives: 3, extra_pool: [extra.jsonl], "
            f"cache_dir: {tmp_path / 'cache'}}}")
    whole = build_yaml(tmp_path, _recipe(tmp_path, step))
    monkeypatch.setattr(mine, "CHUNK_ROWS", 5)
    chunked = build_yaml(tmp_path, _recipe(tmp_path, step), force=True)
    records = read_shards(whole.out_dir, "retrieval").to_pylist()
    assert len(records) > 20 and sum(len(r["negatives"]) for r in records) > 20
    assert read_shards(chunked.out_dir, "retrieval").to_pylist() == records
    assert chunked.manifest["mining"] == whole.manifest["mining"]


def test_ivfpq_in_shards_shares_one_quantizer_and_merges_exact_top_k(tmp_path):
    """Shards of an IVF-PQ search (each its own codes from one trained quantizer, its candidates re-scored
    exactly) merged: exact similarities, best first, ids across shards, recall against exact search; a shard
    opened from the `.npy` file (as a Ray actor opens it) searches as the in-memory one."""
    from datakit.engines.vectorsearch import PoolShard, ShardSpec

    pool = np.lib.format.open_memmap(tmp_path / "pool.npy", mode="w+", dtype=np.float32, shape=(30_000, 64))
    pool[:] = _clustered(30_000, 64, 1)
    pool.flush()
    q = _clustered(200, 64, 2)
    _, exact_i = build_index(np.asarray(pool), "flat").search(q, 30)
    search = VectorSearch(pool, "ivfpq", shard_rows=11_000)
    assert search.n_shards == 3 and search.where == "this process"
    s, i = search.search(q, 30)
    assert len({int(x) // 11_000 for x in i.reshape(-1)}) == 3  # every shard contributes
    rows = np.repeat(np.arange(len(q)), 30)
    assert np.allclose(s.reshape(-1), np.einsum("ij,ij->i", q[rows], pool[i.reshape(-1)]), atol=1e-5)
    assert np.all(np.diff(s, axis=1) <= 0)
    recall = np.mean([len(set(a) & set(e)) / 30 for a, e in zip(i, exact_i)])
    assert recall >= 0.95, recall
    trained = VectorSearch._trained(pool, 64)
    spec = ShardSpec(str(tmp_path / "pool.npy"), 11_000, 22_000, trained)
    from_file, in_memory = PoolShard(spec).search(q, 30), PoolShard(spec, pool).search(q, 30)
    assert np.array_equal(from_file[0], in_memory[0]) and np.array_equal(from_file[1], in_memory[1])
    assert from_file[1].min() >= 11_000 and from_file[1].max() < 22_000
    search.close()


def test_auto_search_calibrates_nprobe_to_the_recall_target_on_real_queries(tmp_path, monkeypatch):
    """Under `auto` the search measures recall@k against exact search on a sample of the queries and raises
    nprobe until the target is met (issue #45); the recall it reports is what an independent check finds."""
    import datakit.engines.vectorsearch as vs

    monkeypatch.setattr(vs, "EXACT_LIMIT", 1_000)  # IVF-PQ at 40k vectors (a test-sized pool)
    pool = np.lib.format.open_memmap(tmp_path / "pool.npy", mode="w+", dtype=np.float32, shape=(40_000, 64))
    pool[:] = _clustered(40_000, 64, 3)
    q = _clustered(200, 64, 4)
    search = VectorSearch(pool, "auto", nprobe=1)  # a start far too low: one list of 800
    assert search.kind == "ivfpq" and search.nlist == 800
    report = search.calibrate(q, 30, target=0.95)
    assert report["tried"][0]["nprobe"] == 1 and report["tried"][0]["recall"] < 0.95
    _, exact = vs.exact_search(pool, q, 30)
    _, found = search.search(q, 30)
    assert report["recall"] == pytest.approx(vs.recall_at(found, exact), abs=1e-4) and report["recall"] >= 0.95
    assert report["index"] == search.kind and (report["index"] == "flat" or report["nprobe"] > 1)
    # a user's own index setting is measured, not changed
    fixed = VectorSearch(pool, "ivfpq", nprobe=1).calibrate(q, 30)
    assert fixed["index"] == "ivfpq" and fixed["nprobe"] == 1 and fixed["recall"] < 0.95 and fixed["tried"] == []
    # a target IVF-PQ cannot reach falls back to exact search
    strict = VectorSearch(pool, "auto", nprobe=1).calibrate(q, 30, target=1.0)
    assert strict["index"] == "flat" and strict["recall"] == 1.0 and "switched" in strict
