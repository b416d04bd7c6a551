"""`dedup`: drop exact and near-duplicate records, never a record that carries other training signal.

Two records are duplicates only when every side of them is (retrieval: the query and the positive; pairs: both
texts, in either order; classification: the text) AND what they teach agrees (a pair's score and label, a
text's label): SICK's minimal edits with different relatedness are kept, two questions with the same query and
different answers are kept, and one text under two labels is a *label conflict*, reported (`dedup.json`), not
dropped.

A global step in bounded memory: while the stream flows it spills the records of the kinds it dedups, and what it
needs per record (hashes, lengths, datasets, each side's shingle set, band hashes, and the keys it groups by,
split into hash partitions: `datakit.engines.spill`), to its work folder. Once the stream ends it finds
duplicates one partition at a time (units, then exact groups; near duplicates proposed by LSH buckets over the
joined sides, with bands chosen for recall at the joined Jaccard a pair at the threshold on every side can fall
to, and decided by the exact
Jaccard of each side's shingle sets; clusters by union-find over the verified pairs), then streams the kept records
back out. Per-record arrays (elections, masks) are memmaps in the work folder; in memory it holds only what
one hash partition, the verified pairs and the report need. Other kinds pass straight through. Drops are counted per
dataset; `dedup.json` lists, for sampled clusters, the kept record and the records it replaced.

The heavy parts are pure functions handed to the executor's task runner (`StepContext.tasks`, `datakit.tasks`): `sign` (a batch
normalised, hashed, shingled, MinHashed and banded), `partition_candidates` (one hash partition of the band
buckets: its candidate pairs, split by pair hash into VERIFY_GROUPS) and `verify_group` (a group's pairs decided
by exact Jaccard, its verified pairs joined into a forest of components). Locally they run in this process; on
Ray as tasks, the candidates shuffled through the object store; the driver joins the forests (components over
the forests are those over every verified pair). The decisions are the same wherever they ran."""
from __future__ import annotations

import json
import os
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from datakit.engines import minhash as mh
from datakit.hashing import hash_strings, splitmix
from datakit.records import MAIN_TEXTS
from datakit.engines.spill import Columns, Partitions, elect, read_partition, trim_heap
from datakit.steps.base import ARTIFACT_NAME, Step, StepConfig, Stream, register

EXAMPLES = 20
BUCKET_CAP = 256  # a band bucket of more docs is split by the next band (minhash.split_bucket)
PAIR_CHUNK = 256  # candidates verified per mapping of the spilled shingle sets: a read maps the 64 KiB
# around it (the kernel's fault-around), so a chunk's mapping holds at most ~32 MiB of file pages in RSS
MAP_WHOLE = 128 << 20  # shingle-set files up to this size are mapped once per group (at most this much RSS):
# a fresh mapping per 256 pairs costs a page fault per set read (at 100k documents, half the verification time)
BAND_SHIFT = 40  # band bucket rows carry (band << 40) | position
_SHOWN = 300
VERIFY_GROUPS = 16  # candidate pairs are shuffled by pair hash into this many verification tasks


class DedupConfig(StepConfig):
    type: Literal["dedup"] = "dedup"
    kinds: list[Literal["retrieval", "pair", "classification", "passage"]] = ["retrieval", "pair", "classification"]
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
    report: str = Field("dedup.json", pattern=ARTIFACT_NAME)  # a plain file name inside the output


CHUNK = 1 << 22  # n-sized masks are computed this many records at a time


def _is_self(elected: np.ndarray, path: Path) -> np.ndarray:
    """elected[i] == i, as a bool `.npy` memmap at `path`, chunk by chunk (no n-sized array in memory)."""
    out = np.lib.format.open_memmap(path, "w+", bool, (len(elected),))
    for lo in range(0, len(elected), CHUNK):
        out[lo: lo + CHUNK] = elected[lo: lo + CHUNK] == np.arange(lo, min(lo + CHUNK, len(elected)))
    return out


def _where(mask: Any, n: int) -> np.ndarray:
    """The positions where `mask(lo, hi)` (a mask of records lo..hi) holds, chunk by chunk."""
    parts = [np.flatnonzero(mask(lo, min(n, lo + CHUNK))) + lo for lo in range(0, n, CHUNK)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class _Lookup:
    """record -> the record its near-duplicate cluster keeps, for the records in clusters (sorted `nodes`)."""

    def __init__(self, nodes: np.ndarray, keepers: np.ndarray):
        self.nodes, self.keepers = nodes, keepers

    def __getitem__(self, i: int) -> int:
        j = int(np.searchsorted(self.nodes, i))
        return int(self.keepers[j]) if j < len(self.nodes) and self.nodes[j] == i else i


def joined_text(table: pa.Table, fields: list[str], unordered: bool = False) -> pa.Array:
    """The fields of each record joined by a separator the normaliser turns into a space.

    `unordered` (two fields): the pair is keyed the same whichever order it comes in.
    """
    cols = [pc.fill_null(table.column(f).combine_chunks(), "") for f in fields]
    if unordered and len(cols) == 2:
        first = pc.less_equal(cols[0], cols[1])
        cols = [pc.if_else(first, cols[0], cols[1]), pc.if_else(first, cols[1], cols[0])]
    return cols[0] if len(cols) == 1 else pc.binary_join_element_wise(*cols, "\n")


def unit_ids(ids: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Each record's unit: its id without the `:ab` / `:ba` that tells a pair's two orders apart."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    if not pc.any(pc.or_(pc.ends_with(ids, ":ab"), pc.ends_with(ids, ":ba"))).as_py():
        return ids  # no order suffix: the regex pass (a third of a millisecond per thousand ids) is skipped
    return pc.replace_substring_regex(ids, r":(ab|ba)$", "")


def joined_threshold(threshold: float, sides: int) -> float:
    """The lowest Jaccard of the joined sides of two records whose every side is at `threshold`, t/(k-(k-1)t):
    reached when the sides' shared words coincide and their other words differ (each side at 0.8, two sides
    sharing their words: 0.667 joined). Bands chosen for it make such a pair a candidate with probability
    >= 0.99, though candidates come from the joined text (one signature per record)."""
    return threshold / (sides - (sides - 1) * threshold)


def agreement(kind: str, table: pa.Table) -> np.ndarray:
    """What a record teaches besides its texts, hashed: a pair's score and label, a text's label."""
    if kind == "pair":
        score = pc.cast(table.column("score"), pa.string())
        label = pc.fill_null(table.column("label"), "")
        return hash_strings(pc.binary_join_element_wise(pc.fill_null(score, ""), label, "\x00"))
    if kind == "classification":
        return hash_strings(pc.fill_null(table.column("label"), ""))
    return np.zeros(table.num_rows, np.uint64)


class _Sides:
    """Each side's shingle sets, spilled batch by batch: one values file and one offsets file per side."""

    def __init__(self, folder: Path, n_sides: int):
        self.folder = folder
        self.files = [open(folder / f"side{i}.u64", "wb") for i in range(n_sides)]
        self.offsets = [open(folder / f"side{i}.off", "wb") for i in range(n_sides)]
        self.ends = [0] * n_sides  # values written so far per side
        self.n = 0
        for fh in self.offsets:
            np.zeros(1, np.int64).tofile(fh)

    def add(self, side: int, values: np.ndarray, offsets: np.ndarray) -> None:
        """A batch's sets of one side (`mh.shingle_sets` layout)."""
        values.tofile(self.files[side])
        (offsets[1:].astype(np.int64) + self.ends[side]).tofile(self.offsets[side])
        self.ends[side] += int(offsets[-1])

    def close(self) -> None:
        for fh in [*self.files, *self.offsets]:
            fh.close()


class _KindState:
    """What the step keeps per kind while the stream flows, on disk: the spilled records, per-record columns
    (text and agreement hashes, length, dataset), the keys to group by (a pair's two orders, exact duplicates,
    equal texts) split into hash partitions, each side's shingle sets and the LSH band hashes. In memory: the
    dataset names and counts only."""

    def __init__(self, folder: Path, cfg: DedupConfig, kind: str, fields: list[str]):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.kind, self.cfg, self.fields = folder, kind, cfg, fields
        self.spill_path = folder / "records.arrow"
        self.writer: pa.ipc.RecordBatchStreamWriter | None = None
        self.n = 0
        self.cols = Columns(folder, {"text": "u8", "agree": "u8", "length": "i4", "dataset": "i4"})
        self.units = Partitions(folder, "unit")  # records from one source row in two orders form one unit
        self.exact = Partitions(folder, "exact")  # normalised text and agreement
        self.texts = Partitions(folder, "text") if kind == "classification" else None  # label conflicts
        self.dataset_names: list[str] = []
        self.dataset_counts: Counter = Counter()
        self.sides = _Sides(folder, len(fields)) if cfg.method == "minhash" else None
        self.bands = self.rows = 0  # LSH layout, set by the step
        self.band_files: list[Any] = []  # one file of uint64 hashes per band (band-major, out of core)
        self.docs_file = None  # the positions of the records that have a signature (not empty texts)
        self.buckets: Partitions | None = None  # (band, position) by (band, hash): one bucket per run

    def add(self, table: pa.Table, signed: dict[str, Any]) -> None:
        """Append a batch and what `sign` computed of it (positions follow the stream)."""
        if self.writer is None:
            self.writer = pa.ipc.new_stream(str(self.spill_path), table.schema)
        self.writer.write_table(table)
        pos = np.arange(self.n, self.n + table.num_rows, dtype=np.int64)
        self.units.append(pos, signed["unit"])
        codes = self._codes(table.column("dataset").combine_chunks())
        self.dataset_counts.update(dict(zip(*np.unique(codes, return_counts=True))))
        self.exact.append(pos, signed["exact"])
        if self.texts is not None:
            self.texts.append(pos, signed["text"])
        self.cols.append(text=signed["text"], agree=signed["agree"], length=signed["length"], dataset=codes)
        if self.sides is not None:
            for i, (values, offsets) in enumerate(signed["sides"]):
                self.sides.add(i, values, offsets)
            live, bh = signed["live"], signed["band_hashes"]
            if not self.band_files:
                self.band_files = [open(self.folder / f"band-{b:03d}.u64", "wb") for b in range(self.bands)]
                self.docs_file = open(self.folder / "band-docs.i64", "wb")
                self.buckets = Partitions(self.folder, "bucket")
            pos[live].tofile(self.docs_file)
            for b, fh in enumerate(self.band_files):  # by band, for splitting a big bucket by the next band
                np.ascontiguousarray(bh[:, b]).tofile(fh)
            band = np.repeat(np.arange(self.bands, dtype=np.int64)[None, :], len(bh), axis=0)
            self.buckets.append(((band << BAND_SHIFT) | pos[live][:, None]).reshape(-1), signed["bucket"])
        self.n += table.num_rows

    def _codes(self, dataset: pa.Array) -> np.ndarray:
        """Each record's dataset as an int32 code into `dataset_names`."""
        enc = pc.dictionary_encode(dataset)
        local = [self._code(name) for name in enc.dictionary.to_pylist()]
        return np.asarray(local, np.int32)[enc.indices.to_numpy(zero_copy_only=False)]

    def _code(self, name: str) -> int:
        if name not in self.dataset_names:
            self.dataset_names.append(name)
        return self.dataset_names.index(name)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        for part in (self.cols, self.units, self.exact, self.texts, self.sides, self.buckets):
            if part is not None:
                part.close()
        for fh in [*self.band_files, *([self.docs_file] if self.docs_file else [])]:
            fh.close()


# ------------------------------------------------------------------ the tasks (pure: they run wherever the runner says)
@dataclass(frozen=True)
class SignSpec:
    """What `sign` needs to know of a kind."""

    kind: str
    fields: tuple[str, ...]
    by_dataset: bool  # scope "dataset": keys and buckets salted by the dataset
    minhash: mh.MinHashConfig | None  # None: the exact pass only
    bands: int
    rows: int


def sign(specs: dict[str, SignSpec], item: tuple[str, pa.Table | None]) -> dict[str, Any] | None:
    """Everything dedup keeps of one batch, per record: the unit key (a pair's two orders are one unit), the text,
    agreement and exact keys, the length; with MinHash each side's shingle sets, which records have a signature
    (`live`), their band hashes and bucket keys. None for a batch of a kind that passes through."""
    kind, table = item
    if table is None:
        return None
    spec = specs[kind]
    norm = mh.normalize(joined_text(table, list(spec.fields), unordered=kind == "pair"))
    out: dict[str, Any] = {"pid": os.getpid(), "unit": hash_strings(unit_ids(table.column("id")))}
    scope = hash_strings(table.column("dataset").combine_chunks()) if spec.by_dataset else None
    keys = hash_strings(norm)
    text = keys if scope is None else splitmix(keys ^ scope)
    agree = agreement(kind, table)
    out.update(text=text, agree=agree, exact=splitmix(text ^ splitmix(agree + np.uint64(1))),
               length=pc.utf8_length(joined_text(table, list(spec.fields))).to_numpy(zero_copy_only=False))
    if spec.minhash is None:
        return out
    out["sides"] = []
    h, d = mh.shingle(norm, spec.minhash, normalized=True)
    if len(spec.fields) == 1:  # the one side is the joined text: shingled once
        out["sides"].append(mh.shingle_sets(h, d, len(norm)))
    else:
        for f in spec.fields:
            side = mh.normalize(pc.fill_null(table.column(f).combine_chunks(), ""))
            out["sides"].append(mh.shingle_sets(*mh.shingle(side, spec.minhash, normalized=True), len(side)))
    sig = mh.signatures_from_shingles(h, d, len(norm), spec.minhash)
    bh = mh.band_hashes(sig, spec.bands, spec.rows)
    if scope is not None:  # different datasets never share a bucket
        bh = splitmix(bh ^ scope[:, None])
    live = ~mh.empty_rows(sig)
    bh = bh[live]
    band = np.arange(spec.bands, dtype=np.uint64)[None, :]
    out.update(live=live, band_hashes=bh, bucket=splitmix(bh + band * np.uint64(0x9E3779B97F4A7C15)).reshape(-1))
    return out


@dataclass(frozen=True)
class DecideJob:
    """Where a kind's spill is and how to decide its candidates (read by the partition and verification tasks)."""

    folder: str
    kind: str
    sides: int
    n: int
    bands: int
    threshold: float
    groups: int = VERIFY_GROUPS

    def path(self, name: str) -> Path:
        folder = Path(self.folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"dedup's work folder {folder} is not visible in this process (pid "
                                    f"{os.getpid()}): on a multi-node cluster, write the build's output folder to "
                                    "storage every node shares")
        return folder / name

    def column(self, name: str, dtype: str) -> np.ndarray:
        return np.memmap(self.path(f"col-{name}.bin"), dtype=np.dtype(dtype), mode="r", shape=(self.n,))

    def set_files(self) -> list[tuple[Path, Path, bool]]:
        """Per side: its shingle sets' values and offsets files, and whether any value was written."""
        return [(self.path(f"side{i}.u64"), self.path(f"side{i}.off"), self.path(f"side{i}.u64").stat().st_size > 0)
                for i in range(self.sides)]


def _sets(values: Path, offsets: Path, nonempty: bool) -> tuple[np.ndarray, np.ndarray]:
    """One side's shingle sets, (values, offsets) memory-mapped: pair_jaccard reads only the candidates'."""
    return (np.memmap(values, dtype=np.uint64, mode="r") if nonempty else np.zeros(0, np.uint64),
            np.memmap(offsets, dtype=np.int64, mode="r"))


def partition_candidates(job: DecideJob, part: int) -> list[np.ndarray]:
    """Candidate pairs (a < b) from one hash partition of the band buckets (every band's buckets that hash there),
    among the records that stand for their exact group (`keeper[i] == i`), split by pair hash into `job.groups`
    parts (each pair, whichever buckets it shares, lands in one verification group). A bucket of more than
    BUCKET_CAP records is split by its members' next band (minhash.split_bucket), never linked as a star."""
    keeper = np.load(job.path("elected-exact.npy"), mmap_mode="r")
    band_pos, key = read_partition(Path(job.folder), "bucket", part)
    docs = np.memmap(job.path("band-docs.i64"), dtype=np.int64, mode="r")

    def hashes(band: int, members: np.ndarray) -> np.ndarray:  # a big bucket's members' hashes in a band
        rows = np.searchsorted(docs, members)
        return np.asarray(np.memmap(job.path(f"band-{band:03d}.u64"), dtype=np.uint64, mode="r")[rows])

    pos = band_pos & np.int64((1 << BAND_SHIFT) - 1)
    stand = np.asarray(keeper[pos]) == pos  # exact duplicates are decided: only their keepers compete
    pos, key, band = pos[stand], key[stand], band_pos[stand] >> BAND_SHIFT
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, len(key)])

    def split(start: int, group: np.ndarray) -> np.ndarray:  # a big bucket, by its members' next bands
        first = int(band[start])
        return mh.split_bucket((first + 1) % job.bands, first, job.bands, hashes, group, BUCKET_CAP)

    pairs = mh.unique_pairs(np.concatenate(mh.run_pairs(pos, starts, sizes, BUCKET_CAP, split)))
    group = (splitmix(pairs[:, 0].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ pairs[:, 1].astype(np.uint64))
             % np.uint64(job.groups)).astype(np.int64)
    order = np.argsort(group.astype(np.uint16), kind="stable")  # radix sort (groups < 2**16)
    bounds = np.searchsorted(group[order], np.arange(job.groups + 1))
    pairs = pairs[order]
    return [pairs[bounds[g]: bounds[g + 1]] for g in range(job.groups)]


def verify_group(job: DecideJob, group: int, parts: list[np.ndarray]) -> dict[str, Any]:
    """A verification group's candidates (unique), decided: every side at the threshold (a pair's texts in either
    order) and what the two records teach agreeing. Returns the counts, the verified pairs with their smallest
    side Jaccard, the near conflicts (similar texts teaching differently, not already equal), and the forest of
    the verified pairs' components: (record, its component's smallest record) for every other record."""
    pairs = mh.unique_pairs(np.concatenate(parts)) if parts else np.zeros((0, 2), np.int64)
    sims = np.zeros(len(pairs))
    files = job.set_files()  # resolved once; mapped afresh per chunk
    small = sum(v.stat().st_size + o.stat().st_size for v, o, _ in files) <= MAP_WHOLE
    chunk = max(len(pairs), 1) if small else PAIR_CHUNK
    for lo in range(0, len(pairs), chunk):  # fresh maps per chunk: the pages read go with them
        part = pairs[lo: lo + chunk]
        sets = [_sets(*f) for f in files]
        straight = np.min([mh.pair_jaccard(part, s) for s in sets], axis=0)
        if job.kind == "pair" and len(sets) == 2:  # text_a of one against text_b of the other, and back
            crossed = np.minimum(mh.pair_jaccard(part, sets[0], sets[1]), mh.pair_jaccard(part, sets[1], sets[0]))
            straight = np.maximum(straight, crossed)
        sims[lo: lo + chunk] = straight
        del sets
    similar = sims >= job.threshold
    agree, text = job.column("agree", "u8"), job.column("text", "u8")
    a, b = pairs[:, 0], pairs[:, 1]
    same = np.asarray(agree[a]) == np.asarray(agree[b])
    fresh = np.asarray(text[a]) != np.asarray(text[b])  # equal texts were counted by the exact pass
    verified = pairs[similar & same]
    nodes = np.unique(verified)
    labels = mh.components(np.searchsorted(nodes, verified), len(nodes))  # each root: its component's smallest
    moved = labels != np.arange(len(nodes))
    return {"pid": os.getpid(), "candidates": len(pairs), "verified": verified, "scores": sims[similar & same],
            "conflicts": pairs[similar & ~same & fresh], "conflict_sims": sims[similar & ~same & fresh],
            "forest": np.stack([nodes[moved], nodes[labels[moved]]], axis=1).astype(np.int64)}


class _Scores:
    """The Jaccard of verified pairs, looked up by (a, b), a < b (for the report's examples)."""

    def __init__(self, pairs: np.ndarray, scores: np.ndarray, n: int):
        keys = pairs[:, 0].astype(np.int64) * n + pairs[:, 1] if len(pairs) else np.zeros(0, np.int64)
        order = np.argsort(keys)
        self.keys, self.scores, self.n = keys[order], scores[order], n

    def get(self, pair: tuple[int, int]) -> float | None:
        key = pair[0] * self.n + pair[1]
        j = int(np.searchsorted(self.keys, key))
        return float(self.scores[j]) if j < len(self.keys) and self.keys[j] == key else None


@register
class Dedup(Step):
    name = "dedup"
    Config = DedupConfig
    config: DedupConfig

    def run(self, stream: Stream) -> Stream:
        cfg = self.config
        mh_cfg = mh.MinHashConfig(num_perm=cfg.num_perm, ngram=cfg.ngram, char_ngram=cfg.char_ngram,
                                  script=cfg.script, seed=cfg.seed)
        self.stats = {"bands": {}, "rows": {}, "candidate_pairs": 0, "verified_pairs": 0, "label_conflicts": 0,
                      "tasks_in": self.ctx.tasks.where, "seconds": {}}
        self.by_dataset: dict[str, Counter] = defaultdict(Counter)
        self.examples: list[dict[str, Any]] = []
        self.conflicts: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self._pids: set[int] = set()
        specs = {}
        for kind in cfg.kinds:
            fields = tuple(cfg.fields.get(kind, list(MAIN_TEXTS[kind])))
            bands, rows = mh.recall_bands(joined_threshold(cfg.threshold, len(fields)), cfg.num_perm)
            specs[kind] = SignSpec(kind, fields, cfg.scope == "dataset", mh_cfg if cfg.method == "minhash" else None,
                                   bands, rows)
        states: dict[str, _KindState] = {}
        passing: deque[tuple[str, pa.Table]] = deque()  # batches of other kinds, in order with the signed ones

        def batches() -> Iterator[tuple[str, pa.Table | None]]:
            for kind, table in stream:
                if kind not in cfg.kinds:
                    passing.append((kind, table))
                    yield kind, None
                    continue
                if kind not in states:
                    spec = specs[kind]
                    states[kind] = _KindState(self.ctx.work_dir / f"dedup-{kind}", cfg, kind, list(spec.fields))
                    states[kind].bands, states[kind].rows = spec.bands, spec.rows
                    self.stats["bands"][kind], self.stats["rows"][kind] = spec.bands, spec.rows
                yield kind, table

        clock = time.perf_counter()
        for (kind, table), signed in self.ctx.tasks.map(sign, specs, batches()):
            if table is None:
                kind, table = passing.popleft()
                self.kept += table.num_rows
                yield kind, table
                continue
            self._pids.add(signed["pid"])
            states[kind].add(table, signed)
        self._took("sign", clock)  # with the wait for upstream batches and the spilling
        for kind, state in states.items():
            state.close()
            keep, leader = self._decide(state)
            clock = time.perf_counter()
            yield from self._replay(kind, state, keep, leader)
            self._took("write", clock)  # with the time downstream takes the batches
        self.stats["worker_processes"] = len(self._pids - {os.getpid()})  # 0: every task ran here
        self._write_report()

    # ------------------------------------------------------------------ deciding
    def _decide(self, state: _KindState) -> tuple[np.ndarray, np.ndarray]:
        """(keep mask over the units' leaders, each record's leader): n-sized `.npy` memmaps in the spill folder, as
        are the elections they come from (no n-sized array in memory).

        The first record of each unit (a pair's two orders are one unit) leads it: it alone is compared,
        clusters keep one unit each, and a unit's records share its fate (`keep[leader]`). Every grouping runs
        one hash partition at a time from disk (datakit.engines.spill)."""
        n = state.n
        clock = time.perf_counter()
        leader, unit_size = elect(state.units, n, on_disk=True)
        is_leader = _is_self(leader, state.folder / "is-leader.npy")
        length = state.cols["length"]
        policy = self.config.keep

        def choose(pos: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
            """Each run's keeper: its first record, or its longest leader (followers never keep; ties: first)."""
            if policy != "longest":
                return pos[starts]
            score = np.where(leader[pos] == pos, np.asarray(length[pos], np.int64), -1)
            run = np.repeat(np.arange(len(starts)), sizes)
            order = np.lexsort((pos, -score, run))
            return pos[order[starts]]

        # exact pass: one unit per normalised text and agreement; the same text disagreeing is a conflict
        keeper, _ = elect(state.exact, n, choose, on_disk=True)  # elected-exact.npy: read by the partition tasks
        keep = _is_self(keeper, state.folder / "keep.npy")
        self._count(state, "exact_duplicate", _where(lambda lo, hi: ~keep[lo:hi] & is_leader[lo:hi], n), keeper,
                    unit_size, None)
        if state.texts is not None:
            self._exact_conflicts(state, is_leader)
        clock = self._took("exact", clock)
        if state.sides is not None and state.band_files:
            job = DecideJob(str(state.folder), state.kind, len(state.fields), n, state.bands, self.config.threshold)
            verified, scores, forests = [], [], []
            for got in self.ctx.tasks.map_reduce(partition_candidates, job, range(state.buckets.parts),
                                                  job.groups, verify_group):
                self._pids.add(got["pid"])
                self.stats["candidate_pairs"] += got["candidates"]
                self.stats["verified_pairs"] += len(got["verified"])
                verified.append(got["verified"])
                scores.append(got["scores"])
                forests.append(got["forest"])
                self._near_conflicts(state, got["conflicts"], got["conflict_sims"])
            clock = self._took("candidates_and_verify", clock)
            dropped, cluster = self._clusters(np.concatenate(forests), leader, length)
            keep[dropped] = False
            self._count(state, "near_duplicate", dropped[np.asarray(is_leader[dropped], bool)], cluster, unit_size,
                        _Scores(np.concatenate(verified), np.concatenate(scores), n))
            self._took("clusters", clock)
        return keep, leader

    def _took(self, phase: str, since: float) -> float:
        """Add the seconds since `since` to a phase's time in the report; returns now."""
        trim_heap()  # what a phase freed goes back to the system before the next one allocates
        now = time.perf_counter()
        seconds = self.stats["seconds"]
        seconds[phase] = round(seconds.get(phase, 0.0) + now - since, 3)
        return now

    def _clusters(self, forest: np.ndarray, leader: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, Any]:
        """Union-find over the verification groups' forests (edges from a record to its group component's smallest
        record: their components are those of every verified pair), over the records in them only (the rest keep
        themselves): (records dropped, a mapping record -> the record its cluster keeps)."""
        nodes = np.unique(forest) if len(forest) else np.zeros(0, np.int64)
        if not len(nodes):
            return nodes, {}
        labels = mh.components(np.searchsorted(nodes, forest), len(nodes))
        score = np.where(leader[nodes] == nodes, np.asarray(length[nodes], np.int64), -1) \
            if self.config.keep == "longest" else None
        kept = mh.keep_mask(labels, score, self.config.keep)
        keeper_of_label = np.zeros(len(nodes), np.int64)
        keeper_of_label[labels[kept]] = nodes[kept]
        return nodes[~kept], _Lookup(nodes, keeper_of_label[labels])

    # ------------------------------------------------------------------ counting and reporting
    def _count(self, state: _KindState, reason: str, dropped: np.ndarray, keeper_of: Any,
               unit_size: np.ndarray, score: _Scores | None) -> None:
        """Count the records dropped for `reason` (each dropped leader with its unit) per dataset; sample clusters
        (the kept record and those it replaced). `dropped`: the dropped leaders' positions, ascending;
        `keeper_of[i]`: the record that replaced record i."""
        if not len(dropped):
            return
        sizes = unit_size[dropped].astype(np.int64)
        self.dropped[reason] += int(sizes.sum())
        per_dataset = np.bincount(np.asarray(state.cols["dataset"][dropped]), weights=sizes,
                                  minlength=len(state.dataset_names))
        for code in np.nonzero(per_dataset)[0]:
            self.by_dataset[state.dataset_names[code]][reason] += int(per_dataset[code])
        if len(self.examples) >= EXAMPLES:
            return
        clusters: dict[int, list[int]] = defaultdict(list)
        for i in dropped[:10_000].tolist():
            k = int(keeper_of[i])
            if k != i and (k in clusters or len(clusters) < EXAMPLES - len(self.examples)):
                clusters[k].append(i)
        rows = self._rows(state, sorted({*clusters, *(i for v in clusters.values() for i in v)}))
        for k, members in clusters.items():
            replaced = []
            for i in members[:5]:
                j = 1.0 if score is None else score.get((min(k, i), max(k, i)))  # None: joined through a third
                replaced.append({**rows[i], **({"jaccard": round(j, 3)} if j is not None else {})})
            self.examples.append({"reason": reason, "kind": state.kind, "kept": rows[k], "replaced": replaced})

    def _exact_conflicts(self, state: _KindState, is_leader: np.ndarray) -> None:
        """Leaders whose normalised text equals another's while what they teach differs (one text partition at
        a time)."""
        agree = state.cols["agree"]
        for pos, text in state.texts.each():  # type: ignore[union-attr]
            lead = is_leader[pos]
            pos, text = pos[lead], text[lead]
            order = np.lexsort((np.asarray(agree[pos]), text))
            pos, text = pos[order], text[order]
            a = np.asarray(agree[pos])
            hits = np.nonzero((text[1:] == text[:-1]) & (a[1:] != a[:-1]))[0]
            if len(hits):
                self._near_conflicts(state, np.stack([pos[hits], pos[hits + 1]], axis=1), np.ones(len(hits)))

    def _near_conflicts(self, state: _KindState, pairs: np.ndarray, sims: np.ndarray) -> None:
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
        wanted = np.asarray(positions, np.int64)
        parts, start = [], 0
        for batch in pa.ipc.open_stream(pa.OSFile(str(state.spill_path))):  # batch by batch: a few rows kept
            inside = wanted[(wanted >= start) & (wanted < start + batch.num_rows)]
            if len(inside):
                parts.append(pa.Table.from_batches([batch]).take(pa.array(inside - start)))
            start += batch.num_rows
        sub = pa.concat_tables(parts)
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

    def _replay(self, kind: str, state: _KindState, keep: np.ndarray, leader: np.ndarray) -> Stream:
        if not state.spill_path.exists():
            return
        self._totals = getattr(self, "_totals", Counter())
        for code, c in state.dataset_counts.items():
            self._totals[state.dataset_names[int(code)]] += int(c)
        start = 0
        # read, not memory-mapped: a mapped spill of 10M records would stay resident as the stream moves on
        for batch in pa.ipc.open_stream(pa.OSFile(str(state.spill_path))):
            mask = keep[leader[start: start + batch.num_rows]]  # a unit's records share its leader's fate
            start += batch.num_rows
            table = pa.Table.from_batches([batch]).filter(pa.array(mask))
            self.kept += table.num_rows
            if table.num_rows:
                yield kind, table

    def report(self) -> dict:
        return {**super().report(), **getattr(self, "stats", {}),
                "dropped_by_dataset": {k: dict(v) for k, v in sorted(getattr(self, "by_dataset", {}).items())}}


