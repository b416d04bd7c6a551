"""`mine_negatives`: hard negatives by retrieval, with a false-negative guard.

Embeds the queries and a candidate pool (every positive of the run's retrieval records, plus optional extra
corpora), searches with faiss, takes candidates from a rank window (`skip`..`depth`, the report's 10-30),
drops every known positive of the query (positives of all records sharing the query text, and near copies
of them) and, with the positive-aware guard, candidates that score too close to the positive
(NV-Retriever's TopK-PercPos: sim(q, c) >= perc * sim(q, p); or a margin), then samples negatives until the
record holds its target. Negatives are tagged `mined`. Global step: the retrieval records are spilled to the
work folder while the pool is collected.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datakit import minhash as mh
from datakit.embed import DEFAULT_MODEL, Embedder, IndexKind, build_index
from datakit.records import add_event, replace_columns
from datakit.sources import ColumnSpec, SourceFields, read_source
from datakit.steps.base import Step, StepConfig, Stream, register


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
    batch_size: int = 64
    cache_dir: str | None = None  # default: $DATAKIT_CACHE or ~/.cache/datakit
    seed: int = 0


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
        cache = ctx.resolve(config.cache_dir) if config.cache_dir else None
        self.embedder = Embedder(config.model, cache_dir=cache, batch_size=config.batch_size)
        self.similarity: dict[str, dict[str, Any]] = {}
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def _selected(self, table: pa.Table) -> np.ndarray:
        if self.config.datasets is None:
            return np.ones(table.num_rows, bool)
        return pc.is_in(table.column("dataset"), value_set=pa.array(self.config.datasets)).to_numpy(zero_copy_only=False)

    def run(self, stream: Stream) -> Stream:
        spill = self.ctx.work_dir / "mine" / "retrieval.arrow"
        spill.parent.mkdir(parents=True, exist_ok=True)
        writer = None
        for kind, table in stream:
            if kind != "retrieval":
                self.kept += table.num_rows
                yield kind, table
                continue
            if writer is None:
                writer = pa.ipc.new_stream(str(spill), table.schema)
            writer.write_table(table)
        if writer is None:
            return
        writer.close()
        table = pa.ipc.open_stream(pa.memory_map(str(spill))).read_all()
        table = self._mine(table)
        self.kept += table.num_rows
        yield "retrieval", table

    # ------------------------------------------------------------------ mining
    def _pool(self, table: pa.Table) -> list[str]:
        texts = table.column("positive").to_pylist()
        for item in self.config.extra_pool:
            src = SourceFields(path=str(self.ctx.resolve(item)))
            for chunk in read_source(src, self.ctx.sandbox, ColumnSpec(["text"])):
                texts += [t for t in chunk.table.column("text").to_pylist() if isinstance(t, str) and t.strip()]
        return list(dict.fromkeys(texts))  # unique, in first-seen order

    def _mine(self, table: pa.Table) -> pa.Table:
        cfg = self.config
        chosen = np.nonzero(self._selected(table))[0]
        if len(chosen) == 0:
            return table
        pool = self._pool(table)
        pool_vec = self.embedder.encode(pool, cfg.document_prefix)
        index = build_index(pool_vec, cfg.index)
        queries = table.column("query").to_pylist()
        instructions = table.column("instruction").to_pylist()
        if "{instruction}" in cfg.query_prefix:
            q_texts = [cfg.query_prefix.replace("{instruction}", instructions[i]) + queries[i] for i in chosen]
            q_vec = self.embedder.encode(q_texts)
        else:
            q_vec = self.embedder.encode([queries[i] for i in chosen], cfg.query_prefix)
        pool_id = {t: i for i, t in enumerate(pool)}
        positives = table.column("positive").to_pylist()
        pos_idx = np.array([pool_id[positives[i]] for i in chosen])
        pos_sim = np.einsum("ij,ij->i", q_vec, pool_vec[pos_idx])
        sims, ids = index.search(q_vec, min(cfg.depth, len(pool)))
        # every known positive of a query: the positives of all records with the same normalised query
        norm_q = mh.hash_strings(mh.normalize(pa.array([queries[i] for i in chosen])))
        known: dict[int, set[int]] = defaultdict(set)
        for qh, p in zip(norm_q.tolist(), pos_idx.tolist()):
            known[qh].add(p)
        negatives = table.column("negatives").to_pylist()
        origins = table.column("negative_origins").to_pylist()
        ids_all = table.column("id").to_pylist()
        reserve = llm_quota([ids_all[i] for i in chosen], cfg.negatives, cfg.llm_share, cfg.seed)
        datasets = table.column("dataset").to_pylist()
        neg_sims: dict[str, list[float]] = defaultdict(list)
        changed = np.zeros(table.num_rows, bool)
        for row, (i, qh) in enumerate(zip(chosen, norm_q.tolist())):
            want = cfg.negatives - len(negatives[i]) - int(reserve[row])
            ds = datasets[i]
            if want <= 0:
                continue
            cand = [(int(c), float(s)) for c, s in zip(ids[row][cfg.skip: cfg.depth], sims[row][cfg.skip: cfg.depth])
                    if c >= 0]
            known_vecs = pool_vec[list(known[qh])]
            taken = set(negatives[i])
            keep = []
            for c, s in cand:
                if c in known[qh] or pool[c] in taken:
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
                negatives[i] = negatives[i] + [pool[c]]
                origins[i] = origins[i] + ["mined"]
                neg_sims[ds].append(s)
            self.counts[ds]["mined"] += len(picks)
            changed[i] = bool(picks)
        for ds in set(datasets[i] for i in chosen):
            rows = [r for r, i in enumerate(chosen) if datasets[i] == ds]
            self.similarity[ds] = {"query_positive": _stats(pos_sim[rows]),
                                   "query_mined_negative": _stats(np.array(neg_sims[ds]))}
        lineage = add_event(table.column("lineage"), "mine_negatives", model=cfg.model,
                            detail=f"ranks {cfg.skip}-{cfg.depth}, guard {cfg.guard}", where=changed)
        return replace_columns(table, {"negatives": negatives, "negative_origins": origins, "lineage": lineage})

    def report(self) -> dict[str, Any]:
        return {**super().report(), "encoded": self.embedder.encoded, "cache_hits": self.embedder.cache_hits,
                "by_dataset": {k: dict(v) for k, v in self.counts.items()}}

    def manifest_entries(self) -> dict[str, Any]:
        return {"mining": {"model": self.config.model, "similarity": self.similarity}}
