"""Run a recipe: sources -> adapters -> steps -> shards + manifest (`build`), or steps over an existing output
(`apply_steps`). Where the work runs is the executor's business (`datakit.executors`).

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
import re
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from datakit.card import CARD, corpus_card
from datakit.executors import Executor, LocalExecutor, ProgressFn, StageClock
from datakit.manifest import (MANIFEST, SHARD_KINDS, checked, read_manifest, typed, read_shards, sha256_file,
                              shard_files, verify, write_manifest)
from datakit.manifest_schema import READ_STAGE, Manifest, stage_key
from datakit.output import OutputLock, new_staging, publish
from datakit.reading import DataError, Tally
from datakit.recipe import LLMSettings, LoadedRecipe, OutputConfig, SourceConfig
from datakit.records import STORED_KINDS
from datakit.shards import ShardWriter
from datakit.sources import Sandbox, SourceError, file_digest, input_files
from datakit.steps import Step, StepConfig, StepContext, make_step, step_config

_VERSIONED = ("embedkit", "pyarrow", "duckdb", "datasets", "pydantic", "litellm", "sentence-transformers",
              "faiss-cpu", "datasketch", "transformers", "torch")


@dataclass
class BuildResult:
    out_dir: Path
    manifest: dict[str, Any]
    skipped: bool = False  # output was already up to date

    @property
    def typed(self) -> Manifest:
        """The manifest, typed."""
        return Manifest.model_validate(self.manifest)


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


def input_fingerprint(src: SourceConfig, sandbox: Sandbox) -> dict[str, Any]:
    """What a source read and how: its adapter (and the MTEB task it declares), and its files with size, mtime
    and a content hash (xxh3_128; and the files of its folders that no reader takes), or the HF dataset / SQL."""
    head = {"adapter": src.adapter, **({"mteb_task": src.mteb_task} if src.mteb_task else {})}
    if src.path is not None:
        found = input_files(src.path, sandbox)
        files = [{"path": str(p), "bytes": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns,
                  "xxh3_128": file_digest(p)} for p in found.files]
        return {**head, "files": files, **({"skipped": found.skipped} if found.skipped else {})}
    if src.hf is not None:
        return {**head, "hf": src.hf.model_dump()}
    return {**head, "sql": src.sql}


def _up_to_date(out_dir: Path, recipe_sha: str, inputs: dict[str, Any]) -> dict[str, Any] | None:
    """OUT's manifest (as written) when OUT already holds this recipe's build of these inputs, else None."""
    try:
        raw = read_manifest(out_dir)
        old = Manifest.model_validate(raw)
        if verify(out_dir):  # shards missing or changed since: not up to date
            return None
    except (FileNotFoundError, ValueError):
        return None
    local = all("files" in v for v in inputs.values())  # hub and SQL inputs cannot be fingerprinted cheaply
    same = old.recipe.sha256 == recipe_sha and old.inputs == inputs
    same = same and old.versions.get("embedkit") == package_versions().get("embedkit")
    return raw if (local and same) else None


def source_paths(loaded: LoadedRecipe, inputs: dict[str, Any]) -> list[tuple[str, Path]]:
    """(source name, path) of what the recipe reads: its input files, the folders it lists, the files and folders
    its SQL and local hf: sources name, and the recipe file itself."""
    from datakit.sources import glob_prefix, sandbox_sql

    sandbox = loaded.sandbox
    found: list[tuple[str, Path]] = [("the recipe", Path(loaded.path))]
    for src in loaded.recipe.sources:
        for f in inputs.get(src.name, {}).get("files", []):
            found.append((src.name, Path(f["path"])))
        if src.path is not None:
            for item in [src.path] if isinstance(src.path, str) else src.path:
                p = sandbox.absolute(item)
                found.append((src.name, Path(glob_prefix(str(p))) if any(c in str(p) for c in "*?[") else p))
        if src.sql is not None:
            sql, _, _ = sandbox_sql(src.sql, sandbox)
            for m in re.finditer(r"'(/(?:[^']|'')*)'", sql):
                raw = m.group(1).replace("''", "'")
                found.append((src.name, Path(glob_prefix(raw)) if any(c in raw for c in "*?[") else Path(raw)))
        if src.hf is not None and sandbox.absolute(src.hf.path).exists():
            found.append((src.name, sandbox.absolute(src.hf.path)))
    return found


def check_out_dir(out_dir: Path, loaded: LoadedRecipe, inputs: dict[str, Any]) -> None:
    """The output folder is never a source, a folder holding a source, or inside a source folder (the next build
    would read its own output as data)."""
    from embedkit.outfolder import OutputRefused, inside, refuse_special

    refuse_special(out_dir)
    for name, path in source_paths(loaded, inputs):
        if inside(path, out_dir):
            raise OutputRefused(f"--out {out_dir}: it holds {path}, which {name} reads; give a folder of its own")
        if path.is_dir() and inside(out_dir, path):
            raise OutputRefused(f"--out {out_dir}: it is inside {path}, a folder {name} reads (the next build would "
                                "read this output as data); give a folder outside it")


def build(
    loaded: LoadedRecipe,
    out_dir: str | Path,
    strict: bool | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
    batch_rows: int = 50_000,
    executor: Executor | None = None,
    allow_wide_paths: bool = False,
) -> BuildResult:
    """Build the recipe into `out_dir`. `progress(source, rows)` is called as rows are read. A recipe whose
    allow_paths open more than its own tree (`/`, the home folder, a folder holding the recipe) builds only with
    `allow_wide_paths` (the user's consent: `datakit build --allow-wide-paths`)."""
    from datakit.recipe import RecipeError, check_paths, wide_roots

    executor = executor or LocalExecutor()
    recipe, sandbox = loaded.recipe, loaded.sandbox
    check_paths(loaded)
    wide = wide_roots(loaded)
    if wide and not allow_wide_paths:
        raise RecipeError(f"{loaded.path}: allow_paths opens {', '.join(map(str, wide))} to the recipe (more than "
                          "its own folder tree: any file there could be read into the corpus or sent to an LLM); "
                          "check what it reads (`datakit validate`), then build with --allow-wide-paths")
    out_dir = Path(out_dir)
    strict = recipe.strict if strict is None else strict
    inputs = {}
    for src in recipe.sources:
        try:
            inputs[src.name] = input_fingerprint(src, sandbox)
        except SourceError as exc:
            raise SourceError(f"source {src.name!r}: {exc}") from None
    check_out_dir(out_dir, loaded, inputs)
    recipe_sha = recipe.sha256()
    head = {"recipe": {"name": recipe.name, "sha256": recipe_sha, "path": str(loaded.path)}, "inputs": inputs}

    def records(writer: ShardWriter, tally: Tally) -> Iterator[tuple[str, pa.Table]]:
        return executor.records(loaded, writer, tally, strict, progress, batch_rows)

    with OutputLock(out_dir):  # the up-to-date check too: a writer may be switching the folder
        if not force and (old := _up_to_date(out_dir, recipe_sha, inputs)) is not None:
            return BuildResult(out_dir, old, skipped=True)
        return _execute(out_dir, sandbox, recipe.steps, recipe.output, records, head, recipe.llm, executor)


def apply_steps(in_dir: str | Path, out_dir: str | Path, steps: list[dict[str, Any]] | list[StepConfig],
                base_dir: Path | None = None, shard_rows: int = 50_000, llm: LLMSettings | None = None,
                executor: Executor | None = None) -> BuildResult:
    """Run steps over the shards of an earlier build (e.g. `datakit dedup IN --out OUT`).

    The input's quarantine is carried over; the new manifest names the input build as its parent.
    """
    in_dir = Path(in_dir)
    source = checked(in_dir)  # the input's current build, checked against its manifest, read from here on
    raw_parent = read_manifest(source)
    parent = typed(raw_parent, source / MANIFEST)
    configs = [s if isinstance(s, StepConfig) else step_config(s) for s in steps]  # fails before any work
    blob = json.dumps({"parent": parent.recipe.sha256, "steps": [c.model_dump(mode="json") for c in configs]},
                      sort_keys=True)
    head = {
        "recipe": {"name": f"{parent.recipe.name}+" + "+".join(c.type for c in configs),
                   "sha256": hashlib.sha256(blob.encode()).hexdigest(), "path": None},
        # the parent's whole manifest travels inline: its lineage and audit stay readable after the input folder is
        # rebuilt or replaced (`datakit dedup OUT --out OUT` replaces it)
        "parent": {"path": str(in_dir.resolve()), "recipe": parent.recipe.model_dump(exclude_unset=True),
                   "manifest_sha256": sha256_file(source / MANIFEST), "manifest": raw_parent},
        "inputs": {"shards": {"path": str(in_dir.resolve())}},
    }

    def records(writer: ShardWriter, tally: Tally) -> Iterator[tuple[str, pa.Table]]:
        quarantine = read_shards(source, "quarantine")
        writer.write("quarantine", quarantine)
        for reason, n in Counter(quarantine.column("reason").to_pylist()).items():
            tally.quarantine["(input)"][reason] += n
        for kind in STORED_KINDS:
            for path in shard_files(source, kind):
                for batch in pa.ipc.open_stream(pa.memory_map(str(path))):
                    tally.rows_read[kind] += batch.num_rows
                    yield kind, pa.Table.from_batches([batch])

    output = OutputConfig(shard_rows=shard_rows)
    # the input's audit files (contamination.json, dedup.json, ...) are kept unless a step writes its own of that name
    inherited = [source / name for name in parent.artifacts if name != CARD and (source / name).is_file()]
    with OutputLock(Path(out_dir)):
        return _execute(Path(out_dir), Sandbox.anywhere(base_dir or Path.cwd()), configs, output, records, head,
                        llm or LLMSettings(), executor or LocalExecutor(), inherited)


RecordsFn = Callable[[ShardWriter, Tally], Iterator[tuple[str, pa.Table]]]


def _execute(out_dir: Path, sandbox: Sandbox, configs: list[StepConfig], output: OutputConfig,
             records: RecordsFn, head: dict[str, Any], llm: LLMSettings, executor: Executor,
             inherited: list[Path] = ()) -> BuildResult:
    """Stream records through the steps into a staging folder, then publish it with its manifest. The caller
    holds the output folder's lock."""
    staging = new_staging(out_dir)
    started = time.time()
    stop_watching = None
    try:
        budget = executor.tasks.budget(llm.max_budget_usd)
        ctx = StepContext(sandbox=sandbox, out_dir=out_dir, work_dir=staging / "work",
                          artifacts_dir=staging / "artifacts", llm=llm, budget=budget, tasks=executor.tasks)
        steps = [make_step(config, ctx) for config in configs]
        for step in steps:
            step.preflight()  # an LLM provider that cannot be reached fails here, before any record is read
        writer = ShardWriter(staging, output.shard_rows, output.compression)
        tally = Tally()
        clock = StageClock()
        stop_watching = clock.watch_memory()
        stream = executor.run_steps(clock.wrap(READ_STAGE, records(writer, tally)), steps, ctx, clock)
        counts: dict[str, Counter] = defaultdict(Counter)
        target = next((s.negatives_target for s in steps if s.negatives_target is not None), None)
        mix = NegativeMix(target)
        for kind, table in stream:
            writer.write(kind, table)
            for item in pc.value_counts(table.column("dataset")).to_pylist():
                counts[kind][item["values"]] += item["counts"]
            if kind == "retrieval":
                mix.add(table)
        warnings = [w for i, step in enumerate(steps) for w in step.check(f"step {i}:{step.name}")]
        if not any(counts.values()):
            raise DataError("the build produced no records: every source row was quarantined or dropped by a step "
                            "(see `datakit validate`)")
        shards = writer.close()
        stop_watching()
        head = {**head, "negatives": mix.report(), "executor": executor.describe(),
                "timings_s": clock.exclusive(time.time() - started), "peak_rss_mib": clock.peak_rss_mib(),
                "peak_anon_mib": clock.peak_anon_mib(), "warnings": warnings}
        if any(s.uses_llm for s in steps):
            head["llm_budget"] = budget.as_dict()
        manifest = _publish(staging, out_dir, _manifest(head, counts, tally, steps, shards, started), inherited)
    finally:
        if stop_watching is not None:
            stop_watching()
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return BuildResult(out_dir, manifest)


def _manifest(head: dict[str, Any], counts: dict[str, Counter], tally: Tally, steps: list[Step],
              shards: list[dict[str, Any]], started: float) -> dict[str, Any]:
    reasons: Counter = Counter()
    for c in tally.quarantine.values():
        reasons.update(c)
    duration = time.time() - started
    rows_read = sum(tally.rows_read.values())
    return {
        "recipe": head["recipe"],
        **({"parent": head["parent"]} if "parent" in head else {}),
        "versions": package_versions(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(duration, 3),
        "executor": head["executor"],
        "timings_s": head["timings_s"],
        "peak_rss_mib": head["peak_rss_mib"],
        "peak_anon_mib": head["peak_anon_mib"],
        "rows_read": dict(tally.rows_read),
        "rows_per_s": round(rows_read / duration, 1) if duration > 0 else None,
        "inputs": head["inputs"],
        "counts": {k: dict(sorted(counts[k].items())) for k in SHARD_KINDS if k != "quarantine" and counts.get(k)},
        "quarantined": {"n": sum(reasons.values()), "reasons": dict(reasons),
                        "by_dataset": {k: dict(v) for k, v in tally.quarantine.items()},
                        **({"lost_rows": dict(tally.lost)} if tally.lost else {})},
        **({"incomplete_inputs": tally.truncated} if tally.truncated else {}),
        "dropped": {stage_key(i, s.name): dict(s.dropped) for i, s in enumerate(steps)},
        "steps": [{"type": s.name, "config": s.config.model_dump(mode="json"), "report": s.report()} for s in steps],
        "shards": shards,
        "negatives": head["negatives"],
        **({"llm_budget": head["llm_budget"]} if "llm_budget" in head else {}),
        **_step_entries(steps),
        **({"warnings": head["warnings"]} if head.get("warnings") else {}),
    }


def _step_entries(steps: list[Step]) -> dict[str, Any]:
    """Top-level manifest keys from the steps; mappings under one key (e.g. `synthesis`) are merged, and a
    second step of the same type gets `#2`; lists (e.g. `warnings`) are joined."""
    out: dict[str, Any] = {}
    for step in steps:
        for key, value in step.manifest_entries().items():
            if key in out and isinstance(out[key], list) and isinstance(value, list):
                out[key] = out[key] + value
            elif key in out and isinstance(out[key], dict) and isinstance(value, dict):
                for sub, item in value.items():
                    name, n = sub, 2
                    while name in out[key]:
                        name, n = f"{sub}#{n}", n + 1
                    out[key][name] = item
            else:
                out[key] = value
    return out


def _publish(staging: Path, out_dir: Path, manifest: dict[str, Any], inherited: list[Path] = ()) -> dict[str, Any]:
    """Complete the staging folder (reports beside the shards, the input's reports a step did not replace,
    scratch removed, manifest last) and switch the output to it atomically."""
    for path in inherited:
        if not (staging / "artifacts" / path.name).exists():
            (staging / "artifacts").mkdir(exist_ok=True)
            shutil.copyfile(path, staging / "artifacts" / path.name)
    artifacts = sorted(p.name for p in (staging / "artifacts").glob("*")) if (staging / "artifacts").exists() else []
    for name in artifacts:
        (staging / "artifacts" / name).replace(staging / name)
    for scratch in ("artifacts", "work"):
        shutil.rmtree(staging / scratch, ignore_errors=True)
    (staging / CARD).write_text(corpus_card(manifest, out_dir), encoding="utf-8")  # the corpus card, OUT/README.md
    manifest = write_manifest(staging, {**manifest, "artifacts": sorted([*artifacts, CARD])})
    publish(staging, out_dir)
    return manifest
