"""Run a recipe: sources -> adapters -> steps -> shards + manifest.

The build writes into a staging folder inside OUT and moves the result into place only
when it is complete: a crash or a kill never damages the previous output, and
`manifest.json` (written last) marks a folder as complete.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata as md
import json
import platform
import shutil
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from datakit.adapters import make_adapter
from datakit.llm.client import Budget
from datakit.recipe import LLMSettings, LoadedRecipe, OutputConfig, SourceConfig
from datakit.records import KINDS, QUARANTINE_SCHEMA
from datakit.shards import (MANIFEST, SHARD_KINDS, ShardWriter, read_manifest, read_shards, sha256_file, shard_files,
                            write_json_atomic)
from datakit.sources import read_source, resolve_files
from datakit.steps import Step, StepContext, make_step, step_config

MANIFEST_FORMAT = 1
_VERSIONED = ("embedkit", "pyarrow", "duckdb", "datasets", "pydantic", "litellm", "sentence-transformers",
              "faiss-cpu", "datasketch", "transformers", "torch")


class DataError(ValueError):
    """A bad input row under --strict: names the file, row and field."""


@dataclass
class BuildResult:
    out_dir: Path
    manifest: dict[str, Any]
    skipped: bool = False  # output was already up to date


@dataclass
class _Tally:
    rows_read: Counter = field(default_factory=Counter)
    quarantine: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))


class NegativeMix:
    """Per dataset: hard negatives by origin (given / mined / llm) and records short of the target."""

    def __init__(self, target: int | None):
        self.target = target
        self.counts: dict[str, Counter] = defaultdict(Counter)

    def add(self, table: pa.Table) -> None:
        origins = table.column("negative_origins").combine_chunks()
        flat = pc.list_flatten(origins)
        parent_ds = table.column("dataset").combine_chunks().take(pc.list_parent_indices(origins))
        for item in pc.value_counts(pc.binary_join_element_wise(parent_ds, flat, "\x00")).to_pylist():
            ds, origin = item["values"].split("\x00")
            self.counts[ds][origin] += item["counts"]
        if self.target is not None:
            short = pc.less(pc.list_value_length(origins), self.target)
            for item in pc.value_counts(table.column("dataset").combine_chunks().filter(short)).to_pylist():
                self.counts[item["values"]]["records_short"] += item["counts"]
        for item in pc.value_counts(table.column("dataset")).to_pylist():
            self.counts[item["values"]]["records"] += item["counts"]

    def report(self) -> dict[str, dict[str, int]]:
        keys = ("records", "given", "mined", "llm") + (("records_short",) if self.target is not None else ())
        return {ds: {k: int(c.get(k, 0)) for k in keys} for ds, c in sorted(self.counts.items())}


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def input_fingerprint(src: SourceConfig, base_dir: Path) -> dict[str, Any]:
    """What a source read: files with size and mtime, or the HF dataset / SQL text."""
    if src.path is not None:
        files = resolve_files(src.path, base_dir)
        return {"files": [{"path": str(p), "bytes": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in files]}
    if src.hf is not None:
        return {"hf": src.hf.model_dump()}
    return {"sql": src.sql}


def _up_to_date(out_dir: Path, recipe_sha: str, inputs: dict[str, Any]) -> dict[str, Any] | None:
    try:
        old = read_manifest(out_dir)
    except (FileNotFoundError, ValueError):
        return None
    local = all("files" in v for v in inputs.values())  # hub and SQL inputs cannot be fingerprinted cheaply
    same = old.get("recipe", {}).get("sha256") == recipe_sha and old.get("inputs") == inputs
    same = same and old.get("versions", {}).get("embedkit") == package_versions().get("embedkit")
    return old if (local and same) else None


ProgressFn = Callable[[str, int], None]


def build(
    loaded: LoadedRecipe,
    out_dir: str | Path,
    strict: bool | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
    batch_rows: int = 50_000,
) -> BuildResult:
    """Build the recipe into `out_dir`. `progress(source, rows)` is called as rows are read."""
    recipe, base_dir = loaded.recipe, loaded.base_dir
    out_dir = Path(out_dir)
    strict = recipe.strict if strict is None else strict
    inputs = {s.name: input_fingerprint(s, base_dir) for s in recipe.sources}
    recipe_sha = recipe.sha256()
    if not force and (old := _up_to_date(out_dir, recipe_sha, inputs)) is not None:
        return BuildResult(out_dir, old, skipped=True)

    head = {"recipe": {"name": recipe.name, "sha256": recipe_sha, "path": str(loaded.path)}, "inputs": inputs}

    def records(writer: ShardWriter, tally: _Tally) -> Iterator[tuple[str, pa.Table]]:
        return _records(loaded, writer, tally, strict, progress, batch_rows)

    return _execute(out_dir, base_dir, recipe.steps, recipe.output, records, head, recipe.llm)


def apply_steps(in_dir: str | Path, out_dir: str | Path, steps: list[dict[str, Any]],
                base_dir: Path | None = None, shard_rows: int = 50_000, llm: LLMSettings | None = None) -> BuildResult:
    """Run steps over the shards of an earlier build (e.g. `datakit dedup IN --out OUT`).

    The input's quarantine is carried over; the new manifest names the input build as its parent.
    """
    in_dir = Path(in_dir)
    parent = read_manifest(in_dir)
    for raw in steps:
        step_config(raw)  # fail before any work on a bad step
    blob = json.dumps({"parent": parent["recipe"]["sha256"], "steps": steps}, sort_keys=True)
    head = {
        "recipe": {"name": f"{parent['recipe']['name']}+" + "+".join(s["type"] for s in steps),
                   "sha256": hashlib.sha256(blob.encode()).hexdigest(), "path": None},
        "parent": {"path": str(in_dir.resolve()), "recipe": parent["recipe"],
                   "manifest_sha256": sha256_file(in_dir / MANIFEST)},
        "inputs": {"shards": {"path": str(in_dir.resolve())}},
    }

    def records(writer: ShardWriter, tally: _Tally) -> Iterator[tuple[str, pa.Table]]:
        quarantine = read_shards(in_dir, "quarantine")
        writer.write("quarantine", quarantine)
        for reason, n in Counter(quarantine.column("reason").to_pylist()).items():
            tally.quarantine["(input)"][reason] += n
        for kind in KINDS:
            for path in shard_files(in_dir, kind):
                for batch in pa.ipc.open_stream(pa.memory_map(str(path))):
                    tally.rows_read[kind] += batch.num_rows
                    yield kind, pa.Table.from_batches([batch])

    output = OutputConfig(shard_rows=shard_rows)
    return _execute(Path(out_dir), base_dir or Path.cwd(), steps, output, records, head, llm or LLMSettings())


RecordsFn = Callable[[ShardWriter, "_Tally"], Iterator[tuple[str, pa.Table]]]


def _execute(out_dir: Path, base_dir: Path, raw_steps: list[dict[str, Any]], output: OutputConfig,
             records: RecordsFn, head: dict[str, Any], llm: LLMSettings) -> BuildResult:
    """Stream records through the steps into a staging folder, then publish it with its manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".staging-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = out_dir / f".staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    started = time.time()
    try:
        budget = Budget(llm.max_budget_usd)
        ctx = StepContext(base_dir=base_dir, out_dir=out_dir, work_dir=staging / "work",
                          artifacts_dir=staging / "artifacts", llm=llm, budget=budget)
        steps = [make_step(raw, ctx) for raw in raw_steps]
        writer = ShardWriter(staging, output.shard_rows, output.compression)
        tally = _Tally()
        stream = records(writer, tally)
        for step in steps:
            stream = step.run(stream)
        counts: dict[str, Counter] = defaultdict(Counter)
        target = next((s.config.negatives for s in steps if s.name == "mine_negatives"), None)
        mix = NegativeMix(target)
        for kind, table in stream:
            writer.write(kind, table)
            for item in pc.value_counts(table.column("dataset")).to_pylist():
                counts[kind][item["values"]] += item["counts"]
            if kind == "retrieval":
                mix.add(table)
        shards = writer.close()
        head = {**head, "negatives": mix.report()}
        if any(getattr(s, "uses_llm", False) for s in steps):
            head["llm_budget"] = budget.as_dict()
        manifest = _publish(staging, out_dir, _manifest(head, counts, tally, steps, shards, started))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BuildResult(out_dir, manifest)


def _records(loaded: LoadedRecipe, writer: ShardWriter, tally: _Tally, strict: bool,
             progress: ProgressFn | None, batch_rows: int) -> Iterator[tuple[str, pa.Table]]:
    """Read every source through its adapter; quarantine goes straight to the writer."""
    for src in loaded.recipe.sources:
        adapter = make_adapter(src)
        for chunk in read_source(src, loaded.base_dir, adapter.columns(), batch_rows):
            out = adapter.adapt(chunk)
            bad = chunk.quarantine + out.quarantine
            tally.rows_read[src.name] += chunk.table.num_rows + len(chunk.quarantine)
            if bad:
                if strict:
                    q = bad[0]
                    row = f"row {q['row']}" if q["row"] >= 0 else "a row"
                    raise DataError(f"source {src.name!r}: {q['file']}, {row}, field {q['field'] or '-'}: "
                                    f"{q['reason']}: {q['detail']}")
                for q in bad:
                    tally.quarantine[src.name][q["reason"]] += 1
                rows = [{"dataset": src.name, **q} for q in bad]
                writer.write("quarantine", pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA))
            if progress:
                progress(src.name, tally.rows_read[src.name])
            for kind, tables in out.tables.items():
                for table in tables:
                    yield kind, table
        for kind, tables in adapter.flush().tables.items():
            for table in tables:
                yield kind, table


def _manifest(head: dict[str, Any], counts: dict[str, Counter], tally: _Tally, steps: list[Step],
              shards: list[dict[str, Any]], started: float) -> dict[str, Any]:
    reasons: Counter = Counter()
    for c in tally.quarantine.values():
        reasons.update(c)
    duration = time.time() - started
    rows_read = sum(tally.rows_read.values())
    return {
        "format": MANIFEST_FORMAT,
        "recipe": head["recipe"],
        **({"parent": head["parent"]} if "parent" in head else {}),
        "versions": package_versions(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(duration, 3),
        "rows_read": dict(tally.rows_read),
        "rows_per_s": round(rows_read / duration, 1) if duration > 0 else None,
        "inputs": head["inputs"],
        "counts": {k: dict(sorted(counts[k].items())) for k in SHARD_KINDS if k != "quarantine" and counts.get(k)},
        "quarantined": {"n": sum(reasons.values()), "reasons": dict(reasons),
                        "by_dataset": {k: dict(v) for k, v in tally.quarantine.items()}},
        "dropped": {f"{i}:{s.name}": dict(s.dropped) for i, s in enumerate(steps)},
        "steps": [{"type": s.name, "config": s.config.model_dump(mode="json"), "report": s.report()} for s in steps],
        "shards": shards,
        "negatives": head["negatives"],
        **({"llm_budget": head["llm_budget"]} if "llm_budget" in head else {}),
        **_step_entries(steps),
    }


def _step_entries(steps: list[Step]) -> dict[str, Any]:
    """Top-level manifest keys from the steps; mappings under one key (e.g. `synthesis`) are merged, and a
    second step of the same type gets `#2`."""
    out: dict[str, Any] = {}
    for step in steps:
        for key, value in step.manifest_entries().items():
            if key in out and isinstance(out[key], dict) and isinstance(value, dict):
                for sub, item in value.items():
                    name, n = sub, 2
                    while name in out[key]:
                        name, n = f"{sub}#{n}", n + 1
                    out[key][name] = item
            else:
                out[key] = value
    return out


def _publish(staging: Path, out_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Swap the staged kind folders and step reports into place; the manifest goes last."""
    old = read_manifest(out_dir).get("artifacts", []) if (out_dir / MANIFEST).exists() else []
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for name in old:
        (out_dir / name).unlink(missing_ok=True)
    for kind in SHARD_KINDS:
        target = out_dir / kind
        if target.exists():
            shutil.rmtree(target)
        if (staging / kind).exists():
            (staging / kind).rename(target)
    artifacts = sorted(p.name for p in (staging / "artifacts").glob("*")) if (staging / "artifacts").exists() else []
    for name in artifacts:
        (staging / "artifacts" / name).replace(out_dir / name)
    manifest = {**manifest, "artifacts": artifacts}
    write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest
