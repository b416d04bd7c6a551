"""Arrow shard writer/reader and the manifest.

Layout of a build (`datakit.output` publishes builds into OUT/build-<id> and switches OUT/current to the new
one; OUT/<kind> and OUT/manifest.json are links through `current`)::

    BUILD/retrieval/part-00000.arrow   BUILD/pair/...   BUILD/classification/...   BUILD/quarantine/...
    BUILD/manifest.json                (the shards' names, rows, bytes and sha256)

Shards are Arrow IPC *stream* files (what `datasets.Dataset.from_file` memory-maps), written
under a temporary name and renamed when complete, so a killed run never leaves a half shard
that looks whole.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from datakit.records import KINDS, QUARANTINE_SCHEMA, schema

SHARD_KINDS = (*KINDS, "quarantine")
MANIFEST = "manifest.json"
CURRENT = "current"


def kind_schema(kind: str) -> pa.Schema:
    return QUARANTINE_SCHEMA if kind == "quarantine" else schema(kind)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ShardWriter:
    """Buffers record tables per kind and writes shards of exactly `shard_rows` rows (the last may be short)."""

    def __init__(self, root: Path, shard_rows: int, compression: str = "none"):
        self.root = root
        self.shard_rows = shard_rows
        self.compression = None if compression == "none" else compression
        self.buffers: dict[str, list[pa.Table]] = {k: [] for k in SHARD_KINDS}
        self.buffered: dict[str, int] = dict.fromkeys(SHARD_KINDS, 0)
        self.shards: list[dict[str, Any]] = []

    def write(self, kind: str, table: pa.Table) -> None:
        if not table.num_rows:
            return
        self.buffers[kind].append(table)
        self.buffered[kind] += table.num_rows
        while self.buffered[kind] >= self.shard_rows:
            whole = pa.concat_tables(self.buffers[kind])
            self._flush(kind, whole.slice(0, self.shard_rows))
            rest = whole.slice(self.shard_rows)
            self.buffers[kind] = [rest] if rest.num_rows else []
            self.buffered[kind] = rest.num_rows

    def close(self) -> list[dict[str, Any]]:
        for kind in SHARD_KINDS:
            if self.buffered[kind]:
                self._flush(kind, pa.concat_tables(self.buffers[kind]))
                self.buffers[kind], self.buffered[kind] = [], 0
        return self.shards

    def _flush(self, kind: str, table: pa.Table) -> None:
        folder = self.root / kind
        folder.mkdir(parents=True, exist_ok=True)
        index = sum(1 for s in self.shards if s["kind"] == kind)
        final = folder / f"part-{index:05d}.arrow"
        tmp = final.with_suffix(".arrow.tmp")
        table = table.cast(kind_schema(kind))
        options = pa.ipc.IpcWriteOptions(compression=self.compression)
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema, options=options) as w:
            w.write_table(table, max_chunksize=65_536)
        os.replace(tmp, final)
        self.shards.append({"file": f"{kind}/{final.name}", "kind": kind, "rows": table.num_rows,
                            "bytes": final.stat().st_size, "sha256": sha256_file(final)})


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


def shard_files(out_dir: str | Path, kind: str) -> list[Path]:
    return sorted((build_dir(out_dir) / kind).glob("part-*.arrow"))


def read_shards(out_dir: str | Path, kind: str) -> pa.Table:
    """All shards of a kind as one memory-mapped table (empty table with the schema when none)."""
    tables = []
    for path in shard_files(out_dir, kind):
        with pa.memory_map(str(path)) as source:
            tables.append(pa.ipc.open_stream(source).read_all())
    return pa.concat_tables(tables) if tables else kind_schema(kind).empty_table()


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    return json.loads((build_dir(out_dir) / MANIFEST).read_text(encoding="utf-8"))
