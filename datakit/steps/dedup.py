"""`dedup`: drop exact and near-duplicate records (normalised-text hash, then MinHash + LSH).

A global step: it spills the records of the kinds it dedups into its work folder while hashing and signing
them batch by batch (signatures and each record's shingle set go to disk), finds duplicates once the stream
ends (exact groups in numpy, LSH buckets grouped out of core in DuckDB with bands chosen for recall, every
candidate decided by the exact Jaccard of the two shingle sets, clusters by union-find), then streams the kept
records back out. Other kinds pass straight through.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from datakit import minhash as mh
from datakit.records import MAIN_TEXTS
from datakit.steps import Step, StepConfig, Stream, register


class DedupConfig(StepConfig):
    type: Literal["dedup"] = "dedup"
    kinds: list[Literal["retrieval", "pair", "classification"]] = ["retrieval", "pair", "classification"]
    fields: dict[str, list[str]] = {}  # per kind; default: query+positive, text_a+text_b, text
    method: Literal["exact", "minhash"] = "minhash"  # minhash also runs the exact pass first
    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 1  # word shingles: sets of words (benchmarks/RESULTS.md: best recall on edited short texts)
    char_ngram: int = 2
    script: Literal["auto", "word", "char"] = "auto"
    keep: Literal["first", "longest"] = "first"
    scope: Literal["kind", "dataset"] = "kind"  # compare across all datasets of a kind, or within each dataset
    seed: int = 1


def joined_text(table: pa.Table, fields: list[str], unordered: bool = False) -> pa.Array:
    """The fields of each record joined by a separator the normaliser turns into a space.

    `unordered` (two fields): the pair is keyed the same whichever order it comes in.
    """
    cols = [pc.fill_null(table.column(f).combine_chunks(), "") for f in fields]
    if unordered and len(cols) == 2:
        first = pc.less_equal(cols[0], cols[1])
        cols = [pc.if_else(first, cols[0], cols[1]), pc.if_else(first, cols[1], cols[0])]
    return cols[0] if len(cols) == 1 else pc.binary_join_element_wise(*cols, "\n")


def first_of_group(keys: np.ndarray) -> np.ndarray:
    """For each position, the first position holding the same key."""
    labels = np.unique(keys, return_inverse=True)[1].reshape(-1)
    first = np.full(labels.max() + 1 if len(labels) else 0, len(keys), np.int64)
    np.minimum.at(first, labels, np.arange(len(keys)))
    return first[labels]


class _KindState:
    """What the step keeps per kind while the stream flows: spilled records, hashes, signatures, bands."""

    def __init__(self, folder: Path, cfg: DedupConfig, kind: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.kind, self.cfg = folder, kind, cfg
        self.spill_path = folder / "records.arrow"
        self.writer: pa.ipc.RecordBatchStreamWriter | None = None
        self.n = 0
        self.exact: list[np.ndarray] = []
        self.units: list[np.ndarray] = []  # records from one source row in two orders form one unit
        self.lengths: list[np.ndarray] = []
        self.scopes: list[np.ndarray] = []
        self.sig_file = open(folder / "signatures.u32", "wb") if cfg.method == "minhash" else None
        self.shingle_file = open(folder / "shingles.u64", "wb") if cfg.method == "minhash" else None
        self.shingle_counts: list[np.ndarray] = []
        self.band_files: list[Path] = []

    def add(self, table: pa.Table, fields: list[str], mh_cfg: mh.MinHashConfig, bands: int, rows: int) -> None:
        if self.writer is None:
            self.writer = pa.ipc.new_stream(str(self.spill_path), table.schema)
        self.writer.write_table(table)
        norm = mh.normalize(joined_text(table, fields, unordered=self.kind == "pair"))
        self.units.append(mh.hash_strings(pc.replace_substring_regex(table.column("id").combine_chunks(),
                                                                     r":(ab|ba)$", "")))
        scope = table.column("dataset").combine_chunks() if self.cfg.scope == "dataset" else None
        keyed = norm if scope is None else pc.binary_join_element_wise(scope, norm, "\x00")
        self.exact.append(mh.hash_strings(keyed))
        self.lengths.append(pc.utf8_length(joined_text(table, fields)).to_numpy(zero_copy_only=False))
        if scope is not None:
            self.scopes.append(mh.hash_strings(scope))
        if self.sig_file is not None:
            h, doc = mh.shingle(norm, mh_cfg, normalized=True)
            sig = mh.signatures_from_shingles(h, doc, len(norm), mh_cfg)
            sig.tofile(self.sig_file)
            values, offsets = mh.shingle_sets(h, doc, len(norm))
            values.tofile(self.shingle_file)
            self.shingle_counts.append(np.diff(offsets))
            bh = mh.band_hashes(sig, bands, rows)
            if scope is not None:  # different datasets never share a bucket
                bh = mh.splitmix(bh ^ self.scopes[-1][:, None])
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
        if self.sig_file is not None:
            self.sig_file.close()
            self.shingle_file.close()

    def shingle_sets(self) -> tuple[np.ndarray, np.ndarray]:
        """Every record's shingle set (memory-mapped values, offsets), in stream order."""
        offsets = np.zeros(self.n + 1, np.int64)
        np.cumsum(np.concatenate(self.shingle_counts), out=offsets[1:])
        path = self.folder / "shingles.u64"
        values = np.memmap(path, dtype=np.uint64, mode="r") if offsets[-1] else np.zeros(0, np.uint64)
        return values, offsets


@register
class Dedup(Step):
    name = "dedup"
    Config = DedupConfig
    config: DedupConfig

    def run(self, stream: Stream) -> Stream:
        cfg = self.config
        mh_cfg = mh.MinHashConfig(num_perm=cfg.num_perm, ngram=cfg.ngram, char_ngram=cfg.char_ngram,
                                  script=cfg.script, seed=cfg.seed)
        bands, rows = mh.recall_bands(cfg.threshold, cfg.num_perm)
        self.stats = {"bands": bands, "rows": rows, "candidate_pairs": 0, "verified_pairs": 0}
        states: dict[str, _KindState] = {}
        for kind, table in stream:
            if kind not in cfg.kinds:
                self.kept += table.num_rows
                yield kind, table
                continue
            state = states.get(kind) or states.setdefault(kind, _KindState(self.ctx.work_dir / f"dedup-{kind}", cfg, kind))
            state.add(table, cfg.fields.get(kind, list(MAIN_TEXTS[kind])), mh_cfg, bands, rows)
        for kind, state in states.items():
            state.close()
            keep = self._decide(state)
            yield from self._replay(kind, state, keep)

    def _decide(self, state: _KindState) -> np.ndarray:
        """Boolean keep mask over the kind's records, in stream order.

        The first record of each unit (a pair's two orders are one unit) stands for the unit: it alone
        is compared, clusters keep one unit each, and a unit's records share its fate.
        """
        n = state.n
        lengths = np.concatenate(state.lengths).astype(np.int64)
        leader = first_of_group(np.concatenate(state.units))
        lengths = np.where(leader == np.arange(n), lengths, -1)  # followers are never a cluster's keeper
        # exact pass: one unit per normalised text
        exact_group = first_of_group(np.concatenate(state.exact))
        exact_keep = mh.keep_mask(exact_group, lengths, self.config.keep)
        self.dropped["exact_duplicate"] += int(n - exact_keep[leader].sum())
        keep = exact_keep
        if state.sig_file is not None and state.band_files:
            # near duplicates: LSH buckets -> candidate pairs -> verified pairs -> clusters
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
            verified, _ = mh.verify_exact(pairs, state.shingle_sets(), threshold=self.config.threshold)
            self.stats["verified_pairs"] += len(verified)
            keep = exact_keep & mh.keep_mask(mh.components(verified, n), lengths, self.config.keep)
            self.dropped["near_duplicate"] += int(exact_keep[leader].sum() - keep[leader].sum())
        return keep[leader]

    def _replay(self, kind: str, state: _KindState, keep: np.ndarray) -> Stream:
        if not state.spill_path.exists():
            return
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
        return {**super().report(), **getattr(self, "stats", {})}
