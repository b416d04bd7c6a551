"""`mine_negatives`: hard negatives by retrieval, with a false-negative guard.

Embeds the queries and a candidate pool (every positive of the run's retrieval records, plus optional extra
corpora), searches with faiss, takes candidates from a rank window (`skip`..`depth`, the report's 10-30),
drops every known positive of the query (positives of all records sharing the query text, and near copies
of them) and, with the positive-aware guard, candidates that score too close to the positive
(NV-Retriever's TopK-PercPos: sim(q, c) >= perc * sim(q, p); or a margin), then samples negatives until the
record holds its target. Negatives are tagged `mined`. Global step in bounded memory: the retrieval records,
the unique pool texts and both sides' embeddings are written to the work folder and memory-mapped; the search
is `datakit.engines.vectorsearch` (exact in shards, or IVF-PQ with exact re-scoring); records are mined CHUNK_ROWS at a
time. In memory per record: a query hash and a positive's pool id; per pool text: a hash and an id.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from datakit.engines import minhash as mh
from datakit.hashing import hash_strings
from datakit.engines.embed import DEFAULT_MODEL, Embedder
from datakit.records import PASSAGE, add_event, replace_columns
from datakit.sources import ColumnSpec, SourceFields, read_source
from datakit.steps.base import Step, StepConfig, Stream, register
from datakit.engines.vectorsearch import CALIBRATION_QUERIES, NPROBE, RECALL_TARGET, IndexKind, VectorSearch


class MineConfig(StepConfig):
    type: Literal["mine_negatives"] = "mine_negatives"
    model: str = DEFAULT_MODEL  # sentence-transformers path or hub id; default: the packaged MiniLM
    query_prefix: str = ""  # e.g. "query: " (E5); `{instruction}` is replaced by the record's instruction
    document_prefix: str = ""  # e.g. "passage: "
    datasets: list[str] | None = None  # default: every retrieval dataset
    extra_pool: list[str] = []  # JSONL/CSV/Parquet files with a `text` column, relative to the recipe
    skip: int = 10  # rank window [skip, depth): the report mines ranks 10 to 30
    depth: int = 30
    negatives: int = 4  # target negatives per record (given + mined + LLM)
    llm_share: float = 0.0  # share of the target left for `llm_negatives` (the report: 0.3)
    guard: Literal["perc_pos", "margin", "none"] = "perc_pos"
    perc: float = 0.95  # perc_pos: drop candidates with sim >= perc * sim(query, positive)
    margin: float = 0.05  # margin: drop candidates with sim >= sim(query, positive) - margin
    copy_threshold: float = 0.98  # a candidate this close to a known positive is a copy of it
    index: IndexKind = "auto"
    nprobe: int = Field(NPROBE, gt=0)  # IVF lists an `ivfpq` query visits: more = higher recall, slower search
    # (1M spliced real sentences: 128 -> 0.889 of the exact top 30, 1024 -> 0.955; benchmarks/mine_build_bench.py);
    # under `auto` the start of the calibration ladder
    recall_target: float = Field(RECALL_TARGET, ge=0.0, le=1.0)  # auto: recall@depth against exact search that
    # the search must reach on a sample of the queries (measured at run time; 0 skips the measurement)
    search_shard_rows: int | None = Field(None, gt=0)  # pool vectors per search shard (default: vectorsearch's);
    # on Ray the shards are held by actors across the workers, searched at once and their top-k merged
    batch_size: int = 64
    cache_dir: str | None = None  # default: $DATAKIT_CACHE or ~/.cache/datakit; in a recipe, inside its sandbox
    passages: bool = True  # the stream's passage records (the `documents` adapter) join the pool
    seed: int = 0

    def named_paths(self) -> list[tuple[str, str]]:
        return [(f"extra_pool[{i}]", p) for i, p in enumerate(self.extra_pool)] + \
            ([("cache_dir", self.cache_dir)] if self.cache_dir else [])


CHUNK_ROWS = 8192  # records (and pool texts) mined, embedded and held in memory at a time
HIST_BINS = 40  # similarity histogram: equal bins over [-1, 1] (the audit report plots them)


def _stats(values: np.ndarray) -> dict[str, Any]:
    if len(values) == 0:
        return {"n": 0}
    q = np.percentile(values, [10, 50, 90])
    counts, _ = np.histogram(np.clip(values, -1, 1), bins=HIST_BINS, range=(-1.0, 1.0))
    return {"n": int(len(values)), "mean": round(float(values.mean()), 4), "p10": round(float(q[0]), 4),
            "p50": round(float(q[1]), 4), "p90": round(float(q[2]), 4),
            "hist": {"lo": -1.0, "hi": 1.0, "counts": counts.tolist()}}


def llm_quota(ids: list[str], target: int, share: float, seed: int) -> np.ndarray:
    """Negatives left to the LLM per record: on average target * share, deterministic per record id."""
    if share <= 0:
        return np.zeros(len(ids), np.int64)
    want = target * share
    base, frac = int(np.floor(want)), want - np.floor(want)
    u = np.array([int(hashlib.sha1(f"{seed}:{i}".encode()).hexdigest()[:8], 16) / 2**32 for i in ids])
    return base + (u < frac).astype(np.int64)


@register
class MineNegatives(Step):
    name = "mine_negatives"
    Config = MineConfig
    config: MineConfig

    def __init__(self, config: MineConfig, ctx):
        super().__init__(config, ctx)
        self.negatives_target = config.negatives
        cache = ctx.readable(config.cache_dir, "mine_negatives.cache_dir") if config.cache_dir else None
        self.embedder = Embedder(config.model, cache_dir=cache, batch_size=config.batch_size)
        self.similarity: dict[str, dict[str, Any]] = {}
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def _selected(self, table: pa.Table) -> np.ndarray:
        if self.config.datasets is None:
            return np.ones(table.num_rows, bool)
        return pc.is_in(table.column("dataset"), value_set=pa.array(self.config.datasets)).to_numpy(zero_copy_only=False)

    def run(self, stream: Stream) -> Stream:
        spill = self.work / "retrieval.arrow"
        spill.parent.mkdir(parents=True, exist_ok=True)
        writer = passages = None
        for kind, table in stream:
            if kind == PASSAGE and self.config.passages:  # a user's passages join the pool (then pass on)
                texts = table.select(["text"])
                if passages is None:
                    passages = pa.ipc.new_file(str(self.work / "passages.arrow"), texts.schema)
                passages.write_table(texts, max_chunksize=CHUNK_ROWS)
            if kind != "retrieval":
                self.kept += table.num_rows
                yield kind, table
                continue
            if writer is None:
                writer = pa.ipc.new_file(str(spill), table.schema)
            writer.write_table(table, max_chunksize=CHUNK_ROWS)
        if passages is not None:
            passages.close()
        if writer is None:
            return
        writer.close()
        for table in self._mine(pa.ipc.open_file(pa.memory_map(str(spill)))):
            self.kept += table.num_rows
            yield "retrieval", table

    # ------------------------------------------------------------------ mining
    @property
    def work(self) -> Path:
        return self.ctx.work_dir / "mine"

    def _pool_chunks(self, spilled: pa.ipc.RecordBatchFileReader):
        """Every candidate text, in order (duplicates included): the positives, the passages of the stream, then
        the extra pool files."""
        for b in range(spilled.num_record_batches):
            yield spilled.get_batch(b).column("positive")
        if (self.work / "passages.arrow").exists():
            passages = pa.ipc.open_file(pa.memory_map(str(self.work / "passages.arrow")))
            for b in range(passages.num_record_batches):
                yield passages.get_batch(b).column("text")
        for item in self.config.extra_pool:
            src = SourceFields(path=str(self.ctx.readable(item, "mine_negatives.extra_pool")))
            for chunk in read_source(src, self.ctx.sandbox, ColumnSpec(["text"])):
                text = chunk.table.column("text").combine_chunks()
                text = text.cast(pa.string()) if text.type != pa.string() else text
                keep = pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0), False)
                yield text.filter(keep)

    def _pool(self, spilled: pa.ipc.RecordBatchFileReader) -> tuple[pa.ChunkedArray, np.ndarray]:
        """The unique candidate texts in first-seen order, written to the work folder and memory-mapped, and the
        pool id of each spilled record's positive. Two passes over the candidates (hash, then write the first
        occurrences), so only their hashes are ever in memory."""
        hashes = np.concatenate([hash_strings(c) for c in self._pool_chunks(spilled)] or [np.zeros(0, np.uint64)])
        uniq, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        is_first = np.zeros(len(hashes), bool)
        is_first[first] = True
        pool_id_of_uniq = np.searchsorted(np.sort(first), first)  # pool id = rank of the first occurrence
        records = sum(spilled.get_batch(b).num_rows for b in range(spilled.num_record_batches))
        record_pool_ids = pool_id_of_uniq[inverse.reshape(-1)[:records]]  # the positives come first
        del hashes, uniq, inverse
        path = self.work / "pool.arrow"
        with pa.ipc.new_file(str(path), pa.schema([("text", pa.string())])) as writer:
            at = 0
            for chunk in self._pool_chunks(spilled):
                mask = is_first[at:at + len(chunk)]
                at += len(chunk)
                if mask.any():
                    writer.write_table(pa.table({"text": chunk.filter(pa.array(mask))}), max_chunksize=CHUNK_ROWS)
        pool = pa.ipc.open_file(pa.memory_map(str(path))).read_all().column("text")  # memory-mapped, not copied
        return pool, record_pool_ids

    @staticmethod
    def _chunks(spilled: pa.ipc.RecordBatchFileReader) -> list[pa.Table]:
        """The spilled records as tables of about CHUNK_ROWS rows (memory-mapped batches, not copied)."""
        chunks, group, rows = [], [], 0
        for b in range(spilled.num_record_batches):
            batch = spilled.get_batch(b)
            group.append(batch)
            rows += batch.num_rows
            if rows >= CHUNK_ROWS:
                chunks.append(pa.Table.from_batches(group))
                group, rows = [], 0
        if group:
            chunks.append(pa.Table.from_batches(group))
        return chunks

    def _query_texts(self, batch: pa.Table, selected: np.ndarray) -> list[str]:
        cfg = self.config
        queries = batch.column("query").to_pylist()
        if "{instruction}" in cfg.query_prefix:
            instructions = batch.column("instruction").to_pylist()
            return [cfg.query_prefix.replace("{instruction}", instructions[i]) + queries[i] for i in selected]
        return [cfg.query_prefix + queries[i] for i in selected]

    def _mine(self, spilled: pa.ipc.RecordBatchFileReader):
        """Yield the spilled records again, a chunk at a time, with mined negatives. Embeddings live in memmaps
        in the work folder; in memory: per record a query hash and a pool id (known positives), per pool text a
        hash and an id, and the chunk being mined."""
        cfg = self.config
        batches = self._chunks(spilled)
        selected = [np.nonzero(self._selected(b))[0] for b in batches]
        if sum(len(s) for s in selected) == 0:
            yield from batches
            return
        pool, record_pool_ids = self._pool(spilled)
        pool_vec = self.embedder.encode_into(self.work / "pool.npy", (
            pool.slice(s, CHUNK_ROWS).to_pylist() for s in range(0, len(pool), CHUNK_ROWS)), len(pool),
            cfg.document_prefix, tasks=self.ctx.tasks)
        q_vec = self.embedder.encode_into(self.work / "queries.npy", (
            self._query_texts(b, s) for b, s in zip(batches, selected)), sum(len(s) for s in selected),
            tasks=self.ctx.tasks)
        search = VectorSearch(pool_vec, cfg.index, shard_rows=cfg.search_shard_rows, nprobe=cfg.nprobe,
                              runner=self.ctx.tasks)
        calibration = None
        if cfg.recall_target > 0:  # the recall of this build's search, measured on a sample of its queries
            n_q = len(q_vec)
            sample = np.sort(np.random.default_rng(cfg.seed).choice(n_q, min(n_q, CALIBRATION_QUERIES), replace=False))
            calibration = search.calibrate(np.asarray(q_vec[sample]), cfg.depth, cfg.recall_target)
        self.searched = {"in": search.where, "shards": search.n_shards, "index": search.kind,
                         **({"calibration": calibration} if calibration else {})}
        # every known positive of a query: the positives of all records with the same normalised query,
        # as (query hash, pool id) sorted by hash
        qh_parts, pos_parts, offset = [], [], 0
        for b, sel in zip(batches, selected):
            qh_parts.append(hash_strings(mh.normalize(b.column("query").take(pa.array(sel, pa.int64())))))
            pos_parts.append(record_pool_ids[offset + sel])
            offset += b.num_rows
        known_q = np.concatenate(qh_parts)
        known_p = np.concatenate(pos_parts)
        by_q = np.argsort(known_q, kind="stable")
        known_q, known_p = known_q[by_q], known_p[by_q]
        sims_by_ds: tuple[dict, dict] = (defaultdict(list), defaultdict(list))  # query-positive, query-negative
        at = 0
        try:
            for table, sel, qh, pos_idx in zip(batches, selected, qh_parts, pos_parts):
                if len(sel) == 0:
                    yield table
                    continue
                q = np.asarray(q_vec[at:at + len(sel)])
                at += len(sel)
                pos_sim = np.einsum("ij,ij->i", q, pool_vec[pos_idx])
                sims, ids = search.search(q, cfg.depth)
                yield self._mine_chunk(table, sel, qh, pos_sim, sims, ids, pool, pool_vec, (known_q, known_p),
                                       sims_by_ds)
        finally:
            search.close()
        pos_sims, neg_sims = sims_by_ds
        self.similarity = {ds: {"query_positive": _stats(np.concatenate(pos_sims[ds])),
                                "query_mined_negative": _stats(np.array(neg_sims[ds]))} for ds in pos_sims}

    def _mine_chunk(self, table: pa.Table, sel: np.ndarray, qh: np.ndarray, pos_sim: np.ndarray, sims: np.ndarray,
                    ids: np.ndarray, pool: pa.Array, pool_vec: np.ndarray, known: tuple[np.ndarray, np.ndarray],
                    sims_by_ds: tuple[dict, dict]) -> pa.Table:
        """One chunk's records with their mined negatives: rank window, known positives, copies, the guard; its
        query-positive and mined-negative similarities added to `sims_by_ds` per dataset."""
        cfg = self.config
        known_q, known_p = known
        pos_sims, neg_sims = sims_by_ds
        window = ids[:, cfg.skip: cfg.depth]
        cand_ids = np.unique(window[window >= 0])
        text_of = dict(zip(cand_ids.tolist(), pool.take(pa.array(cand_ids, pa.int64())).to_pylist()))
        negatives = table.column("negatives").to_pylist()
        origins = table.column("negative_origins").to_pylist()
        ids_all = table.column("id").to_pylist()
        datasets = table.column("dataset").to_pylist()
        reserve = llm_quota([ids_all[i] for i in sel], cfg.negatives, cfg.llm_share, cfg.seed)
        chunk_ds = np.array([datasets[i] for i in sel], dtype=object)
        for ds in dict.fromkeys(chunk_ds.tolist()):
            pos_sims[ds].append(pos_sim[chunk_ds == ds])
        changed = np.zeros(table.num_rows, bool)
        for row, i in enumerate(sel):
            want = cfg.negatives - len(negatives[i]) - int(reserve[row])
            ds = datasets[i]
            if want <= 0:
                continue
            cand = [(int(c), float(s)) for c, s in zip(ids[row][cfg.skip: cfg.depth], sims[row][cfg.skip: cfg.depth])
                    if c >= 0]
            lo, hi = np.searchsorted(known_q, qh[row], "left"), np.searchsorted(known_q, qh[row], "right")
            known_ids = set(known_p[lo:hi].tolist())
            known_vecs = pool_vec[sorted(known_ids)]
            taken = set(negatives[i])
            keep = []
            for c, s in cand:
                if c in known_ids or text_of[c] in taken:
                    self.counts[ds]["dropped_known_positive"] += 1
                    continue
                if (known_vecs @ pool_vec[c]).max() >= cfg.copy_threshold:
                    self.counts[ds]["dropped_near_copy"] += 1
                    continue
                if cfg.guard == "perc_pos" and s >= cfg.perc * pos_sim[row]:
                    self.counts[ds]["dropped_guard"] += 1
                    continue
                if cfg.guard == "margin" and s >= pos_sim[row] - cfg.margin:
                    self.counts[ds]["dropped_guard"] += 1
                    continue
                keep.append((c, s))
            rng = np.random.default_rng(int(hashlib.sha1(f"{cfg.seed}:{ids_all[i]}".encode()).hexdigest()[:8], 16))
            picks = sorted(rng.choice(len(keep), size=min(want, len(keep)), replace=False).tolist()) if keep else []
            for p in picks:
                c, s = keep[p]
                negatives[i] = negatives[i] + [text_of[c]]
                origins[i] = origins[i] + ["mined"]
                neg_sims[ds].append(s)
            self.counts[ds]["mined"] += len(picks)
            changed[i] = bool(picks)
        lineage = add_event(table.column("lineage"), "mine_negatives", model=cfg.model,
                            detail=f"ranks {cfg.skip}-{cfg.depth}, guard {cfg.guard}", where=changed)
        return replace_columns(table, {"negatives": negatives, "negative_origins": origins, "lineage": lineage})

    def report(self) -> dict[str, Any]:
        where = ("this process" if self.embedder.loaded else
                 self.ctx.tasks.embeds_in if self.ctx.tasks.remote and self.embedder.encoded else "nowhere (cached)")
        return {**super().report(), "encoded": self.embedder.encoded, "cache_hits": self.embedder.cache_hits,
                "embedded_in": where, "search": getattr(self, "searched", None),
                "by_dataset": {k: dict(v) for k, v in self.counts.items()}}

    def manifest_entries(self) -> dict[str, Any]:
        cal = (getattr(self, "searched", None) or {}).get("calibration")
        if cal:  # what was chosen and found (timings stay in the step report: they differ from run to run)
            cal = {k: v for k, v in cal.items() if not k.endswith("per_1000_queries")}
            cal["tried"] = [{k: v for k, v in t.items() if not k.endswith("per_1000_queries")} for t in cal["tried"]]
        return {"mining": {"model": self.config.model, "similarity": self.similarity,
                           **({"search": {"calibration": cal}} if cal else {})}}
