"""The manifest's one owner: writing it, finding and reading it, checking the shards on disk against it, and
opening the shards it lists. Every reader (stats, sql, report, dedup/decontaminate on an output, the trainer)
goes through here, so they agree on what a build holds and refuse the same builds with the same error.

Pure pyarrow and the standard library: the trainer imports it on a GPU machine without the data stack.

A manifest lists each shard as {file, kind, rows, bytes, sha256}, `file` relative to the build folder. A
listed file must stay inside that folder (an edited manifest cannot point a reader at a file elsewhere).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from datakit.manifest_schema import Manifest
from datakit.records import KINDS, QUARANTINE_SCHEMA, STORED_KINDS, schema

MANIFEST = "manifest.json"
FORMAT = 1  # the manifest's `format`
CURRENT = "current"
SHARD_KINDS = (*STORED_KINDS, "quarantine")


class InconsistentOutput(ValueError):
    """The manifest and the shards on disk disagree."""


def kind_schema(kind: str) -> pa.Schema:
    return QUARANTINE_SCHEMA if kind == "quarantine" else schema(kind)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_dir(out_dir: str | Path) -> Path:
    """The folder holding OUT's current build (OUT itself for a folder written before `current` existed)."""
    out_dir = Path(out_dir)
    current = out_dir / CURRENT
    if current.is_symlink():
        target = current.resolve()
        if (target / MANIFEST).exists():
            return target
    elif (out_dir / MANIFEST).is_file() and not (out_dir / MANIFEST).is_symlink():
        return out_dir
    raise FileNotFoundError(f"{out_dir}: no {MANIFEST} (not a datakit output folder, or its build did not finish)")


def write_manifest(build: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write a build folder's manifest atomically (a temporary file renamed): the last file of a build. Returns
    what was written."""
    manifest = {"format": FORMAT, **manifest}
    Manifest.model_validate(manifest)  # a writer's bug fails here, before anything is published
    tmp = build / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, build / MANIFEST)
    return manifest


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """OUT's current manifest (a clear error when it is missing or not JSON)."""
    path = build_dir(out_dir) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InconsistentOutput(f"{path}: not a readable manifest ({exc})") from None


def load(out_dir: str | Path) -> Manifest:
    """OUT's current manifest, typed (`datakit.manifest_schema.Manifest`); InconsistentOutput naming the field
    when it lacks what readers need."""
    return typed(read_manifest(out_dir), build_dir(out_dir) / MANIFEST)


def typed(raw: dict[str, Any], path: Path) -> Manifest:
    """A manifest read as JSON (from `path`), typed; InconsistentOutput naming the field it lacks."""
    from pydantic import ValidationError

    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise InconsistentOutput(f"{path}: {where}: {first['msg']}"
                                 + (f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else "")) from None


def shard_path(build: Path, name: str) -> Path | None:
    """The listed shard's path, or None when the manifest points outside the build folder."""
    path = (build / name).resolve()
    return path if build.resolve() in path.parents else None


def verify(out_dir: str | Path, deep: bool = False) -> list[str]:
    """Disagreements between the manifest and the shards on disk: a listed file outside the build folder,
    missing or extra shard files, sizes, row counts (from the Arrow stream metadata), the manifest's record
    counts per kind against its shards and, with `deep`, sha256 digests and the counts per dataset read from
    the shards. Empty when consistent."""
    build = build_dir(out_dir)
    manifest = read_manifest(build)
    problems = []
    listed = {s["file"]: s for s in manifest.get("shards", [])}
    on_disk = {f"{k}/{p.name}" for k in SHARD_KINDS for p in (build / k).glob("part-*.arrow")}
    for name in sorted(on_disk - set(listed)):
        problems.append(f"{name}: on disk but not in the manifest")
    for name, entry in listed.items():
        path = shard_path(build, name)
        if path is None:
            problems.append(f"{name}: the manifest points outside the output folder")
            continue
        if not path.exists():
            problems.append(f"{name}: in the manifest but missing")
            continue
        if path.stat().st_size != entry["bytes"]:
            problems.append(f"{name}: {path.stat().st_size:,} bytes, the manifest says {entry['bytes']:,}")
            continue
        try:
            with pa.memory_map(str(path)) as source:
                rows = sum(b.num_rows for b in pa.ipc.open_stream(source))
        except (pa.ArrowInvalid, OSError) as exc:
            problems.append(f"{name}: not a readable Arrow stream ({exc})")
            continue
        if rows != entry["rows"]:
            problems.append(f"{name}: {rows:,} rows, the manifest says {entry['rows']:,}")
        elif deep and sha256_file(path) != entry["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest")
    if not problems:
        problems += _count_problems(build, manifest, deep)
    return problems


def _count_problems(build: Path, manifest: dict[str, Any], deep: bool) -> list[str]:
    """The manifest's `counts` (records per kind and dataset) and `quarantined.n` against the shards."""
    problems = []
    shard_rows: dict[str, int] = {}
    for entry in manifest.get("shards", []):
        shard_rows[entry["kind"]] = shard_rows.get(entry["kind"], 0) + int(entry["rows"])
    counts = manifest.get("counts", {})
    if not isinstance(counts, dict):
        return ["counts: not a mapping of kind -> {dataset: records}"]
    for kind in STORED_KINDS:
        stated = counts.get(kind, {}) or {}
        if not isinstance(stated, dict) or not all(isinstance(v, int) for v in stated.values()):
            problems.append(f"counts.{kind}: not a mapping of dataset -> records")
            continue
        if sum(stated.values()) != shard_rows.get(kind, 0):
            problems.append(f"counts.{kind}: {sum(stated.values()):,} records, its shards hold "
                            f"{shard_rows.get(kind, 0):,}")
        elif deep and stated:
            actual = _dataset_counts(build, manifest, kind)
            for ds in sorted(set(stated) | set(actual)):
                if stated.get(ds, 0) != actual.get(ds, 0):
                    problems.append(f"counts.{kind}.{ds}: {stated.get(ds, 0):,} records, the shards hold "
                                    f"{actual.get(ds, 0):,}")
    n_quarantined = (manifest.get("quarantined") or {}).get("n")
    if isinstance(n_quarantined, int) and n_quarantined < shard_rows.get("quarantine", 0):
        problems.append(f"quarantined.n: {n_quarantined:,}, the quarantine shards hold "
                        f"{shard_rows.get('quarantine', 0):,}")
    return problems


def _dataset_counts(build: Path, manifest: dict[str, Any], kind: str) -> dict[str, int]:
    import pyarrow.compute as pc

    out: dict[str, int] = {}
    for entry in manifest.get("shards", []):
        if entry["kind"] != kind:
            continue
        with pa.memory_map(str(build / entry["file"])) as source:
            for batch in pa.ipc.open_stream(source):
                for item in pc.value_counts(batch.column("dataset")).to_pylist():
                    out[item["values"]] = out.get(item["values"], 0) + item["counts"]
    return out


def checked(out_dir: str | Path) -> Path:
    """The current build folder of OUT, after checking it against its manifest (readers call this). The build is
    resolved once and read from there; a build that a writer publishing at that moment removed is resolved
    again (a reader never fails on a half-published output)."""
    for attempt in range(5):
        build = build_dir(out_dir)
        try:
            problems = verify(build)
        except (FileNotFoundError, InconsistentOutput):
            if attempt < 4 and build_dir(out_dir) != build:
                continue  # `current` moved on while we read: read the new build
            raise
        if problems and attempt < 4 and build_dir(out_dir) != build:
            continue
        break
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise InconsistentOutput(f"{out_dir}: the shards do not match the manifest ({shown}); rebuild it, or run "
                                 f"`datakit verify {out_dir}`")
    return build


def shard_files(out_dir: str | Path, kind: str) -> list[Path]:
    """The shards of a kind that OUT's current build (or a build folder) lists in its manifest, in order."""
    build = build_dir(out_dir)
    return [build / s["file"] for s in read_manifest(build).get("shards", []) if s["kind"] == kind]


def read_shards(out_dir: str | Path, kind: str) -> pa.Table:
    """All shards of a kind as one memory-mapped table (empty, with the schema, when there are none). Readers that
    did not check the build first call `open_tables` (or `checked`)."""
    tables = []
    for path in shard_files(out_dir, kind):
        with pa.memory_map(str(path)) as source:
            tables.append(pa.ipc.open_stream(source).read_all())
    table = pa.concat_tables(tables) if tables else kind_schema(kind).empty_table()
    if not table.schema.equals(kind_schema(kind)):
        raise InconsistentOutput(f"{out_dir}/{kind}: shard schema differs from datakit.records ({table.schema})")
    return table


def open_tables(out_dir: str | Path, kinds: tuple[str, ...] = KINDS) -> dict[str, pa.Table]:
    """Each record kind of OUT's current build as one memory-mapped table (no copy into RAM), after checking the
    shards against the manifest. A build a concurrent publish removed while it was being opened is opened again
    at the new `current` (once mapped, the tables stay readable whatever a writer does next)."""
    for attempt in range(5):
        build = checked(out_dir)
        try:
            return {kind: read_shards(build, kind) for kind in kinds}
        except (FileNotFoundError, InconsistentOutput, OSError):
            if attempt == 4 or build_dir(out_dir) == build:
                raise
    raise AssertionError("unreachable")
