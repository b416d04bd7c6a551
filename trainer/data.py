"""Shards -> batches. Every batch comes from one dataset; stage 1 draws retrieval data only, stage 2 draws
retrieval with probability `eta` and the other kinds otherwise, datasets in proportion to size**(1/T).

Shards are memory-mapped with pyarrow; only `datakit.records` and `datakit.manifest` are imported from the data
side (pure pyarrow: the GPU machine has torch, transformers and pyarrow, not the data stack). Batches are deterministic given the seed
and the step, and the sampler's state (per-dataset permutation positions) is saved with checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datakit.manifest import open_tables
from datakit.records import KINDS
from trainer.config import DataConfig


def open_shards(out_dir: str | Path) -> dict[str, pa.Table]:
    """Every record kind of a datakit output folder as one memory-mapped table (no copy into RAM), checked
    against its manifest first (`datakit.manifest`: the same check, and error, as every other reader)."""
    return open_tables(out_dir)


def dataset_index(table: pa.Table) -> dict[str, pa.Array]:
    """Row positions of each dataset (the trainer draws every batch from one dataset)."""
    col = table.column("dataset")
    return {name: pc.indices_nonzero(pc.equal(col, name)) for name in pc.unique(col).to_pylist()}


@dataclass
class Batch:
    kind: str
    dataset: str
    queries: list[str]  # retrieval queries, pair text_a, classification anchors
    docs: list[str]  # positives, pair text_b, same-label positives
    negatives: list[list[str]] = field(default_factory=list)  # (B, K)
    scores: list[float] = field(default_factory=list)  # pairs
    labels: list[int] = field(default_factory=list)  # classification: anchor label ids
    negative_labels: list[list[int]] = field(default_factory=list)


def _text_keys(col: pa.ChunkedArray) -> np.ndarray:
    """A 64-bit key per text (equal texts, equal keys)."""
    enc = pc.dictionary_encode(col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col)
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)


class _Pool:
    """One (kind, dataset): its rows, a per-epoch permutation, and the read position."""

    def __init__(self, kind: str, name: str, table: pa.Table, rows: np.ndarray, seed: int, stage: int = 1):
        self.kind, self.name, self.rows, self.seed, self.stage = kind, name, rows, seed, stage
        sub = table.take(pa.array(rows))
        # length grouping: documents dominate a retrieval batch's padding (they run to doc_max_length)
        text = {"retrieval": "positive", "pair": "text_a", "classification": "text"}[kind]
        self.lengths = pc.utf8_length(sub.column(text)).to_numpy(zero_copy_only=False)
        # a batch holds one record per query and per positive: records that share one (one record per answer,
        # as NQ-style data gives) would be each other's false negatives
        self.keys = [_text_keys(sub.column(c)) for c in ("query", "positive")] if kind == "retrieval" else []
        self.epoch, self.pos = 0, 0
        self.queue: list[np.ndarray] = []
        self.carry: list[int] = []  # rows a window could not place without a duplicate: first in the next one
        self._perm = self._permutation()

    def _permutation(self) -> np.ndarray:
        key = sum(ord(c) * 31**i for i, c in enumerate(f"{self.kind}/{self.name}")) % (2**31)  # not hash(): salted
        return np.random.default_rng([self.seed, key, self.epoch, self.stage]).permutation(len(self.rows))

    def take(self, n: int, group: int, grouping: bool) -> np.ndarray:
        """n row positions (into the kind's table); with grouping, batches of similar length."""
        if not self.queue:
            count = group if grouping else 1
            flat = np.concatenate([np.array(self.carry, np.int64), self._next(max(count * n - len(self.carry), 0))])
            self.carry = []
            if grouping:
                flat = flat[np.argsort(self.lengths[flat], kind="stable")]
            chunks = self._without_duplicates(flat, n, count)
            if grouping:
                order = np.random.default_rng([self.seed, self.epoch, self.pos]).permutation(len(chunks))
                chunks = [chunks[i] for i in order]
            self.queue = chunks
        return self.rows[self.queue.pop(0)]

    def _without_duplicates(self, flat: np.ndarray, n: int, count: int) -> list[np.ndarray]:
        """`count` batches of n from `flat` in order, a row whose query or positive is already in a batch going
        to the next batch that has neither (sentence-transformers' no-duplicates rule). Rows left over wait for
        the next window; batches left short take more rows; a dataset too small for the rule (one query, many
        answers) fills its last places as it can."""
        if not self.keys:
            return [flat[i * n:(i + 1) * n] for i in range(count)]
        batches: list[list[int]] = [[] for _ in range(count)]
        seen: list[list[set]] = [[set() for _ in self.keys] for _ in batches]
        pending = flat.tolist()
        for attempt in range(4):
            left = []
            for row in pending:
                keys = [k[row] for k in self.keys]
                for b, batch in enumerate(batches):
                    if len(batch) < n and all(key not in s for key, s in zip(keys, seen[b])):
                        batch.append(row)
                        for key, s in zip(keys, seen[b]):
                            s.add(key)
                        break
                else:
                    left.append(row)
            missing = sum(n - len(b) for b in batches)
            if not missing:
                self.carry = left
                return [np.array(b, np.int64) for b in batches]
            pending = left + self._next(missing).tolist()
        for batch in batches:  # too few distinct queries: duplicates cannot be avoided
            while len(batch) < n and pending:
                batch.append(pending.pop(0))
        self.carry = pending
        return [np.array(b, np.int64) for b in batches]

    def _next(self, n: int) -> np.ndarray:
        out = []
        while n:
            if self.pos == len(self._perm):
                self.epoch, self.pos = self.epoch + 1, 0
                self._perm = self._permutation()
            k = min(n, len(self._perm) - self.pos)
            out.append(self._perm[self.pos: self.pos + k])
            self.pos += k
            n -= k
        return np.concatenate(out)

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "queue": [q.tolist() for q in self.queue], "carry": list(self.carry)}

    def load(self, state: dict[str, Any]) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._perm = self._permutation()
        self.queue = [np.array(q, np.int64) for q in state["queue"]]
        self.carry = list(state.get("carry", []))


def _part(batch: Batch, rows: slice) -> Batch:
    """The rows `rows` of every per-record field of a batch."""
    return Batch(batch.kind, batch.dataset, batch.queries[rows], batch.docs[rows], batch.negatives[rows],
                 batch.scores[rows], batch.labels[rows], batch.negative_labels[rows])


class NotEnoughData(ValueError):
    """The shards cannot feed a stage (found before the model loads)."""


class BatchSampler:
    """Deterministic one-dataset batches for a stage (1: retrieval only; 2: all kinds at share eta)."""

    def __init__(self, tables: dict[str, pa.Table], cfg: DataConfig, stage: int, world_size: int = 1, rank: int = 0):
        self.tables, self.cfg, self.stage = tables, cfg, stage
        self.world_size, self.rank = world_size, rank
        self.step = 0
        self.pools: dict[str, list[_Pool]] = {}
        self.labels: dict[str, dict[str, Any]] = {}
        kinds = ["retrieval"] if stage == 1 else list(KINDS)
        for kind in kinds:
            table = tables[kind]
            for name, rows in sorted(dataset_index(table).items()):
                rows = rows.to_numpy()
                if kind == "classification":
                    rows = self._classification_rows(table, name, rows)
                if len(rows):
                    self.pools.setdefault(kind, []).append(_Pool(kind, name, table, rows, cfg.seed, stage))
        if "retrieval" not in self.pools and stage == 1:
            have = ", ".join(f"{k}: {len(t)}" for k, t in tables.items() if len(t)) or "none"
            raise NotEnoughData(f"stage 1 trains on retrieval records and the shards have none (they hold {have}); "
                                f"give stage 1 `steps: 0` to train every kind from the first step")
        if not self.pools:
            raise NotEnoughData("no records to train on in the shards")

    def _classification_rows(self, table: pa.Table, name: str, rows: np.ndarray) -> np.ndarray:
        """Keep rows whose label has a second example (for the positive) and a different label exists."""
        labels = np.array(table.column("label").take(pa.array(rows)).to_pylist(), dtype=object)
        uniq, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        ok = (counts[inverse] >= 2) & (len(uniq) >= 2)
        by_label = {lab: rows[(labels == lab) & ok] for lab in uniq}
        self.labels[name] = {"ids": {lab: i for i, lab in enumerate(uniq)}, "rows": by_label}
        return rows[ok]

    def _weights(self, pools: list[_Pool]) -> np.ndarray:
        w = np.array([len(p.rows) for p in pools], float) ** (1.0 / self.cfg.temperature)
        return w / w.sum()

    def plan(self, step: int) -> tuple[str, int]:
        """(kind, pool index) of a step: the same on every process."""
        rng = np.random.default_rng([self.cfg.seed, self.stage, step])
        others = [k for k in self.pools if k != "retrieval"]
        if "retrieval" in self.pools and (not others or rng.random() < self.cfg.eta):
            kind = "retrieval"
        else:
            sizes = np.array([sum(len(p.rows) for p in self.pools[k]) for k in others], float) ** (1.0 / self.cfg.temperature)
            kind = others[int(rng.choice(len(others), p=sizes / sizes.sum()))]
        return kind, int(rng.choice(len(self.pools[kind]), p=self._weights(self.pools[kind])))

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        kind, i = self.plan(self.step)
        pool = self.pools[kind][i]
        size = (self.cfg.pair_batch_size or self.cfg.batch_size) if kind == "pair" else self.cfg.batch_size
        rows = pool.take(size * self.world_size, self.cfg.group_batches, self.cfg.length_grouping)
        rng = np.random.default_rng([self.cfg.seed, self.stage, self.step, 7])
        self.step += 1
        # the global batch is drawn whole (its random fills too), then every process takes a disjoint part:
        # the same global batch whatever the number of processes
        return _part(getattr(self, f"_{kind}")(pool, rows, rng), slice(self.rank * size, (self.rank + 1) * size))

    # ------------------------------------------------------------------ batch builders
    def _prompt(self, instruction: str) -> str:
        return self.cfg.query_template.format(instruction=instruction) if instruction else ""

    def _retrieval(self, pool: _Pool, rows: np.ndarray, rng: np.random.Generator) -> Batch:
        t = self.tables["retrieval"].take(pa.array(rows))
        k = self.cfg.negatives
        queries = [self._prompt(ins) + q for ins, q in zip(t.column("instruction").to_pylist(), t.column("query").to_pylist())]
        positives = t.column("positive").to_pylist()
        negatives = []
        column = self.tables["retrieval"].column("positive")
        for row, pos, negs in zip(rows, positives, t.column("negatives").to_pylist()):
            negs = list(negs[:k])
            tries = 0
            while len(negs) < k:  # short of hard negatives: fill with random positives of the dataset (other than
                other_row = int(pool.rows[rng.integers(len(pool.rows))])  # the record's own positive)
                other = column[other_row].as_py()
                tries += 1
                if (other_row != row and other != pos) or tries > 20:
                    negs.append(other)
            negatives.append(negs)
        return Batch("retrieval", pool.name, queries, positives, negatives)

    def _pair(self, pool: _Pool, rows: np.ndarray, rng: np.random.Generator) -> Batch:
        t = self.tables["pair"].take(pa.array(rows))
        prompts = [self._prompt(i) if self.cfg.symmetric_instruction else "" for i in t.column("instruction").to_pylist()]
        a = [p + x for p, x in zip(prompts, t.column("text_a").to_pylist())]
        b = [p + x for p, x in zip(prompts, t.column("text_b").to_pylist())]
        return Batch("pair", pool.name, a, b, scores=t.column("score").to_pylist())

    def _classification(self, pool: _Pool, rows: np.ndarray, rng: np.random.Generator) -> Batch:
        table = self.tables["classification"]
        info = self.labels[pool.name]
        t = table.take(pa.array(rows))
        labels = t.column("label").to_pylist()
        prompt = [self._prompt(i) for i in t.column("instruction").to_pylist()]
        anchors = [p + x for p, x in zip(prompt, t.column("text").to_pylist())]
        positives, negatives, neg_labels = [], [], []
        usable = [x for x in info["rows"] if len(info["rows"][x])]
        for row, lab, p in zip(rows, labels, prompt):
            same = info["rows"][lab]
            choice = same[same != row]
            positives.append(p + table.column("text")[int(choice[rng.integers(len(choice))])].as_py())
            negs, nlabs = [], []
            other = [x for x in usable if x != lab]
            for _ in range(self.cfg.negatives):
                olab = other[rng.integers(len(other))]
                orow = info["rows"][olab][rng.integers(len(info["rows"][olab]))]
                negs.append(p + table.column("text")[int(orow)].as_py())
                nlabs.append(info["ids"][olab])
            negatives.append(negs)
            neg_labels.append(nlabs)
        return Batch("classification", pool.name, anchors, positives, negatives,
                     labels=[info["ids"][lab] for lab in labels], negative_labels=neg_labels)

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "pools": {f"{k}/{p.name}": p.state() for k, ps in self.pools.items() for p in ps}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        for k, ps in self.pools.items():
            for p in ps:
                p.load(state["pools"][f"{k}/{p.name}"])
