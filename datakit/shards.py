"""The Arrow shard writer (the manifest that lists the shards is `datakit.manifest`'s).

Layout of a build (`datakit.output` publishes builds into OUT/build-<id> and switches OUT/current to the new
one; OUT/<kind> and OUT/manifest.json are links through `current`)::

    BUILD/retrieval/part-00000.arrow   BUILD/pair/...   BUILD/classification/...   BUILD/quarantine/...
    BUILD/manifest.json                (the shards' names, rows, bytes and sha256)

Shards are Arrow IPC *stream* files (what `datasets.Dataset.from_file` memory-maps), written
under a temporary name and renamed when complete, so a killed run never leaves a half shard
that looks whole.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from datakit.manifest import SHARD_KINDS, kind_schema, sha256_file


def _injected_fault(folder: Path) -> None:
    """Test hook for faults of the file system a test cannot cause as root: `DATAKIT_FAULT=write:ENOSPC` (or EROFS,
    EACCES, ...) makes the shard write fail with that error, as a full or read-only disk does."""
    name = os.environ.get("DATAKIT_FAULT", "")
    if name.startswith("write:"):
        code = getattr(errno, name.split(":", 1)[1])
        raise OSError(code, os.strerror(code), str(folder))


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
        _injected_fault(folder)
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
