"""`dedup`: drop exact and near-duplicate records, never a record that carries other training signal.

Two records are duplicates only when every side of them is (retrieval: the query and the positive; pairs: both
texts, in either order; classification: the text) AND what they teach agrees (a pair's score and label, a
text's label): SICK's minimal edits with different relatedness are kept, two questions with the same query and
different answers are kept, and one text under two labels is a *label conflict*, reported (`dedup.json`), not
dropped.

A global step: it spills the records of the kinds it dedups into its work folder while hashing and signing
them batch by batch (signatures, and each side's shingle set, go to disk), finds duplicates once the stream
ends (exact groups in numpy; near duplicates proposed by LSH over the joined sides, with bands chosen for recall,
and decided by the exact Jaccard of each side's shingle sets; clusters by union-find), then streams the kept
records back out. Other kinds pass straight through. Drops are counted per dataset; `dedup.json` lists, for
sampled clusters, the kept record and the records it replaced.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from datakit import minhash as mh
from datakit.records import MAIN_TEXTS
from datakit.steps.base import Step, StepConfig, Stream, register

EXAMPLES = 20
_SHOWN = 300


class DedupConfig(StepConfig):
    type: Literal["dedup"] = "dedup"
    kinds: list[Literal["retrieval", "pair", "classification"]] = ["retrieval", "pair", "classification"]
    fields: dict[str, list[str]] = {}  # per kind; default: query+positive, text_a+text_b, text (each a side)
    method: Literal["exact", "minhash"] = "minhash"  # minhash also runs the exact pass first
    threshold: float = Field(0.8, gt=0.0, le=1.0)
    num_perm: int = Field(128, ge=8)
    ngram: int = Field(1, ge=1)  # word shingles: sets of words (benchmarks/RESULTS.md: best recall on edited texts)
    char_ngram: int = Field(2, ge=1)
    script: Literal["auto", "word", "char"] = "auto"
    keep: Literal["first", "longest"] = "first"
    scope: Literal["kind", "dataset"] = "kind"  # compare across all datasets of a kind, or within each dataset
    seed: int = 1
    report: str = "dedup.json"


def joined_text(table: pa.Table, fields: list[str], unordered: bool = False) -> pa.Array:
    """The fields of each record joined by a separator the normaliser turns into a space.

    `unordered` (two fields): the pair is keyed the same whichever order it comes in.
    """
    cols = [pc.fill_null(table.column(f).combine_chunks(), "") for f in fields]
    if unordered and len(cols) == 2:
        first = pc.less_equal(cols[0], cols[1])
        cols = [pc.if_else(first, cols[0], cols[1]), pc.if_else(first, cols[1], cols[0])]
    return cols[0] if len(cols) == 1 else pc.binary_join_element_wise(*cols, "\n")


def agreement(kind: str, table: pa.Table) -> np.ndarray:
    """What a record teaches besides its texts, hashed: a pair's score and label, a text's label."""
    if kind == "pair":
        score = pc.cast(table.column("score"), pa.string())
        label = pc.fill_null(table.column("label"), "")
        return mh.hash_strings(pc.binary_join_element_wise(pc.fill_null(score, ""), label, "\x00"))
    if kind == "classification":
        return mh.hash_strings(pc.fill_null(table.column("label"), ""))
    return np.zeros(table.num_rows, np.uint64)


def first_of_group(keys: np.ndarray) -> np.ndarray:
    """For each position, the first position holding the same key."""
    labels = np.unique(keys, return_inverse=True)[1].reshape(-1)
    first = np.full(labels.max() + 1 if len(labels) else 0, len(keys), np.int64)
    np.minimum.at(first, labels, np.arange(len(keys)))
    return first[labels]


class _Sides:
    """Each side's shingle sets, spilled batch by batch (one values file per side, counts in memory)."""

    def __init__(self, folder: Path, n_sides: int):
        self.folder = folder
        self.files = [open(folder / f"side{i}.u64", "wb") for i in range(n_sides)]
        self.counts: list[list[np.ndarray]] = [[] for _ in range(n_sides)]

    def add(self, side: int, norm: pa.Array, cfg: mh.MinHashConfig) -> None:
        h, doc = mh.shingle(norm, cfg, normalized=True)
        values, offsets = mh.shingle_sets(h, doc, len(norm))
        values.tofile(self.files[side])
        self.counts[side].append(np.diff(offsets))

    def close(self) -> None:
        for fh in self.files:
            fh.close()

    def sets(self, side: int) -> tuple[np.ndarray, np.ndarray]:
        counts = np.concatenate(self.counts[side]) if self.counts[side] else np.zeros(0, np.int64)
        offsets = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        path = self.folder / f"side{side}.u64"
        values = np.memmap(path, dtype=np.uint64, mode="r") if offsets[-1] else np.zeros(0, np.uint64)
        return values, offsets


class _KindState:
    """What the step keeps per kind while the stream flows: spilled records, hashes, sides, bands."""

    def __init__(self, folder: Path, cfg: DedupConfig, kind: str, fields: list[str]):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.kind, self.cfg, self.fields = folder, kind, cfg, fields
        self.spill_path = folder / "records.arrow"
        self.writer: pa.ipc.RecordBatchStreamWriter | None = None
        self.n = 0
        self.text_keys: list[np.ndarray] = []  # normalised joined text (+ scope)
        self.agree: list[np.ndarray] = []
        self.units: list[np.ndarray] = []  # records from one source row in two orders form one unit
        self.lengths: list[np.ndarray] = []
        self.datasets: list[np.ndarray] = []
        self.sides = _Sides(folder, len(fields)) if cfg.method == "minhash" else None
        self.band_files: list[Path] = []

    def add(self, table: pa.Table, mh_cfg: mh.MinHashConfig, bands: int, rows: int) -> None:
        if self.writer is None:
            self.writer = pa.ipc.new_stream(str(self.spill_path), table.schema)
        self.writer.write_table(table)
        norm = mh.normalize(joined_text(table, self.fields, unordered=self.kind == "pair"))
        self.units.append(mh.hash_strings(pc.replace_substring_regex(table.column("id").combine_chunks(),
                                                                     r":(ab|ba)$", "")))
        dataset = table.column("dataset").combine_chunks()
        self.datasets.append(np.asarray(dataset.to_pylist(), dtype=object))
        scope = mh.hash_strings(dataset) if self.cfg.scope == "dataset" else None
        keys = mh.hash_strings(norm)
        self.text_keys.append(keys if scope is None else mh.splitmix(keys ^ scope))
        self.agree.append(agreement(self.kind, table))
        self.lengths.append(pc.utf8_length(joined_text(table, self.fields)).to_numpy(zero_copy_only=False))
        if self.sides is not None:
            for i, f in enumerate(self.fields):
                self.sides.add(i, mh.normalize(pc.fill_null(table.column(f).combine_chunks(), "")), mh_cfg)
            sig = mh.signatures(norm, mh_cfg, normalized=True)
            bh = mh.band_hashes(sig, bands, rows)
            if scope is not None:  # different datasets never share a bucket
                bh = mh.splitmix(bh ^ scope[:, None])
            live = ~mh.empty_rows(sig)
            doc = np.arange(self.n, self.n + len(sig))[live]
            part = pa.table({
                "doc": np.repeat(doc, bands),
                "band": np.tile(np.arange(bands, dtype=np.int16), len(doc)),
                "h": bh[live].reshape(-1),
            })
            path = self.folder / f"bands-{len(self.band_files):05d}.parquet"
            pq.write_table(part, path)
            self.band_files.append(path)
        self.n += table.num_rows

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.sides is not None:
            self.sides.close()


@register
class Dedup(Step):
    name = "dedup"
    Config = DedupConfig
    config: DedupConfig

    def run(self, stream: Stream) -> Stream:
        cfg = self.config
        mh_cfg = mh.MinHashConfig(num_perm=cfg.num_perm, ngram=cfg.ngram, char_ngram=cfg.char_ngram,
                                  script=cfg.script, seed=cfg.seed)
        self.stats = {"bands": {}, "rows": {}, "candidate_pairs": 0, "verified_pairs": 0, "label_conflicts": 0}
        self.by_dataset: dict[str, Counter] = defaultdict(Counter)
        self.examples: list[dict[str, Any]] = []
        self.conflicts: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        states: dict[str, _KindState] = {}
        for kind, table in stream:
            if kind not in cfg.kinds:
                self.kept += table.num_rows
                yield kind, table
                continue
            state = states.get(kind)
            if state is None:
                fields = cfg.fields.get(kind, list(MAIN_TEXTS[kind]))
                state = states[kind] = _KindState(self.ctx.work_dir / f"dedup-{kind}", cfg, kind, fields)
                # the joined sides propose candidates; with two sides, a little below the threshold: a record
                # whose every side reaches it can have a joined Jaccard slightly under it when its sides share words
                margin = 0.05 if len(fields) > 1 else 0.0
                state.bands, state.rows = mh.recall_bands(max(cfg.threshold - margin, 0.05), cfg.num_perm)
                self.stats["bands"][kind], self.stats["rows"][kind] = state.bands, state.rows
            state.add(table, mh_cfg, state.bands, state.rows)
        for kind, state in states.items():
            state.close()
            keep = self._decide(state)
            yield from self._replay(kind, state, keep)
        self._write_report()

    # ------------------------------------------------------------------ deciding
    def _decide(self, state: _KindState) -> np.ndarray:
        """Boolean keep mask over the kind's records, in stream order.

        The first record of each unit (a pair's two orders are one unit) stands for the unit: it alone
        is compared, clusters keep one unit each, and a unit's records share its fate.
        """
        n = state.n
        lengths = np.concatenate(state.lengths).astype(np.int64)
        leader = first_of_group(np.concatenate(state.units))
        is_leader = leader == np.arange(n)
        lengths = np.where(is_leader, lengths, -1)  # followers are never a cluster's keeper
        text = np.concatenate(state.text_keys)
        agree = np.concatenate(state.agree)
        datasets = np.concatenate(state.datasets)
        # exact pass: one unit per normalised text and agreement; the same text disagreeing is a conflict
        exact_group = first_of_group(mh.splitmix(text ^ mh.splitmix(agree + np.uint64(1))))
        exact_keep = mh.keep_mask(exact_group, lengths, self.config.keep)
        self._count(state, "exact_duplicate", exact_keep, exact_group, leader, datasets, None)
        self._exact_conflicts(state, text, agree, is_leader, datasets)
        keep = exact_keep
        if state.sides is not None and state.band_files:
            keeper_of = np.zeros(n, np.int64)
            keeper_of[exact_group[exact_keep]] = np.nonzero(exact_keep)[0]
            keeper = keeper_of[exact_group]  # each record's exact-group keeper stands for it
            con = duckdb.connect()
            con.execute("SET threads = 2")
            con.execute(f"SET temp_directory = '{state.folder / 'duckdb_tmp'}'")
            files = ", ".join(f"'{p}'" for p in state.band_files)
            pairs = mh.candidate_pairs(con, f"SELECT * FROM read_parquet([{files}])")
            con.close()
            pairs = keeper[pairs]
            pairs = pairs[pairs[:, 0] != pairs[:, 1]]
            pairs = np.unique(np.sort(pairs, axis=1), axis=0) if len(pairs) else pairs
            self.stats["candidate_pairs"] += len(pairs)
            similar, sims = self._sides_similar(state, pairs)
            same = agree[pairs[:, 0]] == agree[pairs[:, 1]]
            verified = pairs[similar & same]
            self.stats["verified_pairs"] += len(verified)
            fresh = text[pairs[:, 0]] != text[pairs[:, 1]]  # equal texts were counted by the exact pass
            self._near_conflicts(state, pairs[similar & ~same & fresh], sims[similar & ~same & fresh], datasets)
            labels = mh.components(verified, n)
            near_keep = mh.keep_mask(labels, lengths, self.config.keep)
            keep = exact_keep & near_keep
            score = {(int(a), int(b)): float(s) for (a, b), s in zip(pairs[similar & same], sims[similar & same])}
            self._count(state, "near_duplicate", keep | ~exact_keep, labels, leader, datasets, score)
        return keep[leader]

    def _sides_similar(self, state: _KindState, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each candidate: does every side reach the threshold (pairs: in either order), and the smallest
        side Jaccard of the better order."""
        if len(pairs) == 0:
            return np.zeros(0, bool), np.zeros(0)
        sets = [state.sides.sets(i) for i in range(len(state.fields))]  # type: ignore[union-attr]
        straight = np.min([mh.pair_jaccard(pairs, s) for s in sets], axis=0)
        if state.kind == "pair" and len(sets) == 2:  # text_a of one against text_b of the other, and back
            crossed = np.minimum(mh.pair_jaccard(pairs, sets[0], sets[1]), mh.pair_jaccard(pairs, sets[1], sets[0]))
            straight = np.maximum(straight, crossed)
        return straight >= self.config.threshold, straight

    # ------------------------------------------------------------------ counting and reporting
    def _count(self, state: _KindState, reason: str, keep: np.ndarray, groups: np.ndarray, leader: np.ndarray,
               datasets: np.ndarray, score: dict | None) -> None:
        """Count the records dropped for `reason` (a unit's records with its leader) per dataset; sample clusters
        (the kept record and those it replaced)."""
        dropped = np.nonzero(~keep & (leader == np.arange(state.n)))[0]
        if not len(dropped):
            return
        unit_size = np.bincount(leader, minlength=state.n)
        self.dropped[reason] += int(unit_size[dropped].sum())
        for ds, size in zip(datasets[dropped].tolist(), unit_size[dropped].tolist()):
            self.by_dataset[ds][reason] += size
        if len(self.examples) >= EXAMPLES:
            return
        keepers = {int(g): int(i) for i, g in enumerate(groups) if keep[i] and leader[i] == i}
        clusters: dict[int, list[int]] = defaultdict(list)
        for i in dropped:
            if int(groups[i]) in keepers and len(clusters) < EXAMPLES - len(self.examples):
                clusters[keepers[int(groups[i])]].append(int(i))
        rows = self._rows(state, sorted({*clusters, *(i for v in clusters.values() for i in v)}))
        for k, members in clusters.items():
            replaced = []
            for i in members[:5]:
                j = 1.0 if score is None else score.get((min(k, i), max(k, i)))  # None: joined through a third
                replaced.append({**rows[i], **({"jaccard": round(j, 3)} if j is not None else {})})
            self.examples.append({"reason": reason, "kind": state.kind, "kept": rows[k], "replaced": replaced})

    def _exact_conflicts(self, state: _KindState, text: np.ndarray, agree: np.ndarray, is_leader: np.ndarray,
                         datasets: np.ndarray) -> None:
        """Leaders whose normalised text equals another's while what they teach differs."""
        idx = np.nonzero(is_leader)[0]
        if state.kind != "classification" or not len(idx):
            return
        order = idx[np.lexsort((agree[idx], text[idx]))]
        same_text = text[order][1:] == text[order][:-1]
        differ = agree[order][1:] != agree[order][:-1]
        hits = np.nonzero(same_text & differ)[0]
        pairs = np.stack([order[hits], order[hits + 1]], axis=1) if len(hits) else np.zeros((0, 2), np.int64)
        self._near_conflicts(state, pairs, np.ones(len(pairs)), datasets)

    def _near_conflicts(self, state: _KindState, pairs: np.ndarray, sims: np.ndarray, datasets: np.ndarray) -> None:
        """Classification texts that are (near) duplicates under different labels: reported, both kept. (Pairs
        with another score are not conflicts: minimal edits that change relatedness are the signal.)"""
        if not len(pairs) or state.kind != "classification":
            return
        self.stats["label_conflicts"] += len(pairs)
        take = pairs[: max(0, EXAMPLES - len(self.conflicts))]
        rows = self._rows(state, sorted({int(x) for p in take for x in p}))
        for (a, b), s in zip(take, sims[: len(take)]):
            self.conflicts.append({"kind": state.kind, "jaccard": round(float(s), 3), "a": rows[int(a)],
                                   "b": rows[int(b)]})

    def _rows(self, state: _KindState, positions: list[int]) -> dict[int, dict[str, Any]]:
        """Records at stream positions of the spill, shortened for the report."""
        if not positions or not state.spill_path.exists():
            return {}
        table = pa.ipc.open_stream(pa.memory_map(str(state.spill_path))).read_all()
        sub = table.take(pa.array(positions, pa.int64()))
        cols = ["id", "dataset", *state.fields] + [c for c in ("score", "label") if c in sub.column_names]
        lineage = sub.column("lineage").to_pylist()
        out = {}
        for n, (pos, rec) in enumerate(zip(positions, sub.select(cols).to_pylist())):
            out[pos] = {**{k: (v[:_SHOWN] if isinstance(v, str) else v) for k, v in rec.items()},
                        "file": (lineage[n] or {}).get("file"), "row": (lineage[n] or {}).get("row")}
        return out

    def _write_report(self) -> None:
        for ds, c in self.by_dataset.items():
            total = self._totals.get(ds, 0) if hasattr(self, "_totals") else 0
            if total and sum(c.values()) > total / 2:
                self.warnings.append(f"dedup removed {sum(c.values()):,} of {total:,} records of dataset {ds!r} "
                                     f"(more than half; scope: {self.config.scope})")
        report = {"threshold": self.config.threshold, "scope": self.config.scope, **self.stats,
                  "dropped_by_dataset": {k: dict(v) for k, v in sorted(self.by_dataset.items())},
                  "warnings": self.warnings, "clusters": self.examples, "label_conflict_examples": self.conflicts}
        self.ctx.artifacts_dir.mkdir(parents=True, exist_ok=True)
        (self.ctx.artifacts_dir / self.config.report).write_text(
            json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")

    def _replay(self, kind: str, state: _KindState, keep: np.ndarray) -> Stream:
        if not state.spill_path.exists():
            return
        self._totals = getattr(self, "_totals", Counter())
        for ds, c in Counter(np.concatenate(state.datasets).tolist()).items():
            self._totals[ds] += c
        start = 0
        # no `with`: downstream buffers may still reference the mapped batches after this loop
        for batch in pa.ipc.open_stream(pa.memory_map(str(state.spill_path))):
            mask = keep[start: start + batch.num_rows]
            start += batch.num_rows
            table = pa.Table.from_batches([batch]).filter(pa.array(mask))
            self.kept += table.num_rows
            if table.num_rows:
                yield kind, table

    def report(self) -> dict:
        return {**super().report(), **getattr(self, "stats", {}),
                "dropped_by_dataset": {k: dict(v) for k, v in sorted(getattr(self, "by_dataset", {}).items())}}


