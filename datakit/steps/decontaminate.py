"""`decontaminate`: find records whose texts overlap benchmark test sets, and drop (or flag) them.

A record is contaminated when any of its texts matches a benchmark text of a pack by normalised exact match,
by MinHash Jaccard at or above `threshold`, or by sharing a long n-gram (13 words / 30 CJK characters by
default, fixed when the pack is built). Streaming: each batch is checked on its own against the packs.
The step writes OUT/contamination.json (per task and split, per dataset, 5 examples each) and a summary
into the manifest under `contamination`.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pydantic import Field

from datakit.engines import minhash as mh
from datakit.hashing import hash_strings
from datakit.engines.benchspec import texts_from_spec
from datakit.engines.packs import Pack, build_pack, content_ngrams, lookup_sorted, ngram_text, texts_from_files
from datakit.records import add_event, replace_columns
from datakit.sources import Sandbox
from datakit.steps.base import ARTIFACT_NAME, Step, StepConfig, Stream, register

DEFAULT_FIELDS = {"retrieval": ["query", "positive", "negatives"], "pair": ["text_a", "text_b"],
                  "classification": ["text"]}
MATCHES = ("exact", "minhash", "ngram")
EXAMPLES = 5
_SHOWN = 300


class DecontaminateConfig(StepConfig):
    type: Literal["decontaminate"] = "decontaminate"
    packs: list[str] = []  # pack folders (`datakit bench build`), relative to the recipe
    # or benchmark files/folders (each a task) or bench specs (`*.yaml`, `datakit bench build --from-spec`'s
    # format, read inside the recipe's sandbox), packed when the step starts
    bench_files: list[str] = []
    kinds: list[Literal["retrieval", "pair", "classification"]] = ["retrieval", "pair", "classification"]
    fields: dict[str, list[str]] = {}  # per kind; default: every text (negatives included)
    match: list[Literal["exact", "minhash", "ngram"]] = list(MATCHES)
    threshold: float = Field(0.8, gt=0.0, le=1.0)
    action: Literal["drop", "flag"] = "drop"
    # any: a record is contaminated when one of its texts matches (a pair sharing one sentence with a test pair);
    # all: only when every one of its checked texts does (list fields such as negatives aside): for pair data
    # whose splits share sentences (SICK), where `any` removes nearly every training pair
    sides: Literal["any", "all"] = "any"
    report: str = Field("contamination.json", pattern=ARTIFACT_NAME)  # and <stem>_records.jsonl beside it

    def named_paths(self) -> list[tuple[str, str]]:
        return [(f"packs[{i}]", p) for i, p in enumerate(self.packs)] + \
            [(f"bench_files[{i}]", p) for i, p in enumerate(self.bench_files)]


def _texts(table: pa.Table, fields: list[str]) -> tuple[pa.Array, np.ndarray, list[str]]:
    """Every text of the batch: (texts, record position, field name per text)."""
    texts, pos, names = [], [], []
    for f in fields:
        if f not in table.column_names:
            continue
        col = table.column(f).combine_chunks()
        if pa.types.is_list(col.type):
            flat = pc.list_flatten(col)
            texts.append(flat)
            pos.append(pc.list_parent_indices(col).to_numpy().astype(np.int64))
        else:
            texts.append(col)
            pos.append(np.arange(len(col)))
        names += [f] * len(texts[-1])
    if not texts:
        return pa.array([], pa.string()), np.zeros(0, np.int64), []
    return pa.concat_arrays(texts), np.concatenate(pos), names


def _bench_texts(paths: list[Path], sandbox: Sandbox) -> Iterator[tuple[str, str, str, Any]]:
    """(task, split, field, texts) of benchmark files, folders and bench specs (a spec's sources are read
    inside the recipe's sandbox, whatever the spec's own `allow_paths` say)."""
    files = []
    for path in paths:
        if path.suffix in (".yaml", ".yml") and path.is_file():
            yield from texts_from_files(files)
            files = []
            yield from texts_from_spec(path, within=sandbox)
        else:
            files.append(path)
    yield from texts_from_files(files)


@register
class Decontaminate(Step):
    name = "decontaminate"
    Config = DecontaminateConfig
    config: DecontaminateConfig
    parallel_safe = True  # each batch is checked alone; counters and examples merge in stream order

    def __init__(self, config: DecontaminateConfig, ctx):
        super().__init__(config, ctx)
        self.packs = [Pack(ctx.readable(p, "decontaminate.packs")) for p in config.packs]
        if config.bench_files:
            folder = ctx.work_dir / "bench_pack"
            build_pack(_bench_texts([ctx.readable(p, "decontaminate.bench_files") for p in config.bench_files],
                                    ctx.sandbox), folder)
            self.packs.append(Pack(folder))
        if not self.packs:
            raise ValueError("decontaminate: give `packs` or `bench_files`")
        for pack in self.packs:
            if "minhash" in config.match:
                pack.buckets(config.threshold)
        self.by_task: dict[str, Counter] = defaultdict(Counter)  # "pack/task/split" -> {dataset: records}
        self.by_task_match: dict[str, Counter] = defaultdict(Counter)  # "pack/task/split" -> {best match: records}
        self.by_dataset: Counter = Counter()
        self.by_match: Counter = Counter()
        self.examples: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.dataset_examples: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.checked = 0
        self.candidates = self.verified = 0  # MinHash candidate pairs checked, and those that held
        self.matched: list[dict[str, Any]] = []  # every contaminated record, with its matches (the records file)

    def run(self, stream: Stream) -> Stream:
        for kind, table in stream:
            if kind in self.config.kinds and table.num_rows:
                table = self._check(kind, table)
            self.kept += table.num_rows
            if table.num_rows:
                yield kind, table

    def take_state(self) -> dict[str, Any]:
        state = {**super().take_state(), "by_task": {k: dict(v) for k, v in self.by_task.items()},
                 "by_task_match": {k: dict(v) for k, v in self.by_task_match.items()},
                 "by_dataset": dict(self.by_dataset), "by_match": dict(self.by_match),
                 "examples": dict(self.examples), "dataset_examples": dict(self.dataset_examples),
                 "checked": self.checked, "candidates": self.candidates, "verified": self.verified,
                 "matched": self.matched}
        self.by_task, self.by_dataset, self.by_match = defaultdict(Counter), Counter(), Counter()
        self.by_task_match = defaultdict(Counter)
        self.examples, self.dataset_examples, self.checked = defaultdict(list), defaultdict(list), 0
        self.candidates = self.verified = 0
        self.matched = []
        return state

    def merge_state(self, state: dict[str, Any]) -> None:
        super().merge_state(state)
        for key, counts in state["by_task"].items():
            self.by_task[key].update(counts)
        for key, counts in state.get("by_task_match", {}).items():
            self.by_task_match[key].update(counts)
        self.by_dataset.update(state["by_dataset"])
        self.by_match.update(state["by_match"])
        for mine, theirs in ((self.examples, state["examples"]), (self.dataset_examples, state["dataset_examples"])):
            for key, items in theirs.items():
                mine[key].extend(items[:EXAMPLES - len(mine[key])])
        self.checked += state["checked"]
        self.candidates += state.get("candidates", 0)
        self.verified += state.get("verified", 0)
        self.matched += state.get("matched", [])

    def finish(self) -> None:
        self._write_report()

    def _check(self, kind: str, table: pa.Table) -> pa.Table:
        texts, pos, fields = _texts(table, self.config.fields.get(kind, DEFAULT_FIELDS[kind]))
        self.checked += table.num_rows
        if len(texts) == 0:
            return table
        norm = mh.normalize(texts)
        web = ngram_text(texts) if "ngram" in self.config.match else None
        hits: list[tuple[int, int, int, str, float]] = []  # (text index, pack index, pack row, match, score)
        for p_i, pack in enumerate(self.packs):
            hits += [(t, p_i, r, m, s) for t, r, m, s in self._match(pack, norm, web)]
        if not hits:
            return table
        rank = {m: i for i, m in enumerate(MATCHES)}
        # record -> (task, field) -> its best hit (exact before minhash before ngram, then the highest score)
        best: dict[int, dict[tuple[str, str], tuple[int, int, int, str, float]]] = defaultdict(dict)
        for h in sorted(hits, key=lambda h: (rank[h[3]], -h[4])):
            best[int(pos[h[0]])].setdefault((self._task_key(h[1], h[2]), fields[h[0]]), h)
        if self.config.sides == "all":
            best = self._all_sides(kind, table, best, hits, pos, fields)
            if not best:
                return table
        ids = table.column("id").to_pylist()
        datasets = table.column("dataset").to_pylist()
        lineage = table.column("lineage")
        details: dict[int, str] = {}
        for rec, per_side in best.items():
            ds = datasets[rec]
            first_example = None
            origin = lineage[rec].as_py() or {}
            matches, tasks = [], set()
            for (key, _), (t, p_i, r, m, s) in sorted(per_side.items(), key=lambda kv: (rank[kv[1][3]], -kv[1][4])):
                example = {**self._example(ids[rec], ds, fields[t], texts[t].as_py(), p_i, r, m, s),
                           "file": origin.get("file"), "row": origin.get("row")}
                first_example = first_example or example
                matches.append({k: example[k] for k in ("match", "score", "benchmark", "field", "benchmark_field",
                                                        "benchmark_text")})
                if key not in tasks:  # a record counts once per task, its best match as the example
                    tasks.add(key)
                    self.by_task[key][ds] += 1
                    self.by_task_match[key][m] += 1
                    if len(self.examples[key]) < EXAMPLES:
                        self.examples[key].append(example)
            self.by_dataset[ds] += 1
            self.by_match[first_example["match"]] += 1
            if len(self.dataset_examples[ds]) < EXAMPLES:
                self.dataset_examples[ds].append(first_example)
            details[rec] = "; ".join(f"{x['match']} {x['score']:.2f} {x['benchmark']} ({x['field']})" for x in matches)
            self.matched.append({"id": ids[rec], "kind": kind, "dataset": ds, "action": self.config.action,
                                 "file": origin.get("file"), "row": origin.get("row"), "matches": matches})
        bad = np.zeros(table.num_rows, bool)
        bad[list(best)] = True
        if self.config.action == "drop":
            self.dropped["contaminated"] += int(bad.sum())
            return table.filter(pa.array(~bad))
        events = [f"contaminated: {details[i]}" if i in details else "" for i in range(table.num_rows)]
        lineage = add_event(table.column("lineage"), "decontaminate", detail=events, where=bad)
        return replace_columns(table, {"lineage": lineage})

    def _all_sides(self, kind: str, table: pa.Table, best: dict, hits: list, pos: np.ndarray,
                   fields: list[str]) -> dict:
        """`sides: all`: keep the records whose every checked scalar text (not list fields) matched."""
        wanted = [f for f in self.config.fields.get(kind, DEFAULT_FIELDS[kind])
                  if f in table.column_names and not pa.types.is_list(table.column(f).type)]
        matched: dict[int, set[str]] = defaultdict(set)
        for t, *_ in hits:
            matched[int(pos[t])].add(fields[t])
        return {rec: per_side for rec, per_side in best.items() if set(wanted) <= matched[rec]}

    def _match(self, pack: Pack, norm: pa.Array, web: pa.Array | None) -> list[tuple[int, int, str, float]]:
        out: list[tuple[int, int, str, float]] = []
        nonempty = pc.greater(pc.binary_length(norm), 0).to_numpy(zero_copy_only=False)
        if "exact" in self.config.match:
            q, rows = lookup_sorted(pack.exact, pack.exact_rows, hash_strings(norm))
            out += [(int(a), int(b), "exact", 1.0) for a, b in zip(q, rows) if nonempty[a]]
        if "ngram" in self.config.match and len(pack.ngrams) and web is not None:
            # markup and links stripped; runs of boilerplate (common in the pack, or in this batch) ignored
            gh, gdoc, _ = content_ngrams(web, pack.params, pack.boilerplate)
            q, rows = lookup_sorted(pack.ngrams, pack.ngram_rows, gh)
            pairs = {(int(gdoc[a]), int(b)) for a, b in zip(q, rows)}
            out += [(a, b, "ngram", 1.0) for a, b in sorted(pairs)]
        if "minhash" in self.config.match:
            bands, rows_per_band, keys, owners = pack.buckets(self.config.threshold)
            mh_cfg = pack.params.minhash()
            h, doc = mh.shingle(norm, mh_cfg, normalized=True)
            sig = mh.signatures_from_shingles(h, doc, len(norm), mh_cfg)
            bh = mh.band_hashes(sig, bands, rows_per_band)
            live = ~mh.empty_rows(sig)
            cand = []
            for b in range(bands):
                q, rows = lookup_sorted(keys[b], owners[b], bh[:, b])
                cand.append(np.stack([q, rows], axis=1))
            pairs = mh.unique_pairs(np.concatenate(cand)) if cand else np.zeros((0, 2), np.int64)
            pairs = pairs[live[pairs[:, 0]]] if len(pairs) else pairs
            if len(pairs):  # each candidate decided by the exact Jaccard of the two shingle sets
                rows, local = np.unique(pairs[:, 1], return_inverse=True)
                kept, scores = mh.verify_exact(np.stack([pairs[:, 0], local.reshape(-1)], axis=1),
                                               mh.shingle_sets(h, doc, len(norm)), pack.shingle_sets(rows),
                                               threshold=self.config.threshold)
                self.candidates += len(pairs)
                self.verified += len(kept)
                out += [(int(a), int(rows[b]), "minhash", float(s)) for (a, b), s in zip(kept, scores)]
        return out

    def _task_key(self, pack_index: int, row: int) -> str:
        pack = self.packs[pack_index]
        task, split = pack.texts.column("task")[row].as_py(), pack.texts.column("split")[row].as_py()
        return f"{pack.name}/{task}/{split}"

    def _example(self, rec_id: str, dataset: str, field: str, text: str, p_i: int, row: int, match: str,
                 score: float) -> dict[str, Any]:
        task, split, bfield, btext = self.packs[p_i].task_of(np.array([row]))[0]
        return {"id": rec_id, "dataset": dataset, "field": field, "text": text[:_SHOWN],
                "benchmark": f"{self.packs[p_i].name}/{task}/{split}", "benchmark_field": bfield,
                "benchmark_text": btext[:_SHOWN], "match": match, "score": round(score, 3)}

    def summary(self) -> dict[str, Any]:
        return {
            "action": self.config.action,
            "sides": self.config.sides,
            "records_file": self.records_file,
            "packs": [p.name for p in self.packs],
            "records_checked": self.checked,
            "minhash_candidates": self.candidates,  # pairs that shared an LSH band, decided by exact Jaccard
            "minhash_verified": self.verified,
            "contaminated": sum(self.by_dataset.values()),
            "by_match": dict(self.by_match),
            "by_dataset": dict(self.by_dataset),
            "by_task": {k: sum(v.values()) for k, v in sorted(self.by_task.items())},
            "by_task_match": {k: dict(v) for k, v in sorted(self.by_task_match.items())},
            # every task of every pack, with its number of texts: a task nothing matched is listed too
            "pack_tasks": {f"{p.name}/{task}/{split}": n for p in self.packs
                           for task, splits in p.meta.get("tasks", {}).items() for split, n in splits.items()},
        }

    def _write_report(self) -> None:
        report = {
            **self.summary(),
            "tasks": {k: {"records": sum(v.values()), "by_dataset": dict(v), "examples": self.examples[k]}
                      for k, v in sorted(self.by_task.items())},
            "datasets": {d: {"records": n, "examples": self.dataset_examples[d]} for d, n in self.by_dataset.items()},
        }
        self.ctx.artifacts_dir.mkdir(parents=True, exist_ok=True)
        (self.ctx.artifacts_dir / self.config.report).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        with open(self.ctx.artifacts_dir / self.records_file, "w", encoding="utf-8") as fh:
            for rec in self.matched:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")

    @property
    def records_file(self) -> str:
        """Every contaminated record (id, kind, dataset, file, row, and each match: type, score, benchmark task,
        field, benchmark text), one JSON line each, dropped or flagged."""
        stem = self.config.report.rsplit(".", 1)[0]
        return f"{stem}_records.jsonl"

    def manifest_entries(self) -> dict[str, Any]:
        return {"contamination": self.summary()}

    def report(self) -> dict[str, Any]:
        return {**super().report(), "contaminated": sum(self.by_dataset.values())}
