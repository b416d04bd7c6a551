"""Shard reading for training: memory-mapped Arrow tables per record kind, indexed by dataset.

Only `datakit.records` is imported from the data side (the GPU machine has torch,
transformers and pyarrow, not the data stack).
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from datakit.records import KINDS, schema


def open_shards(out_dir: str | Path) -> dict[str, pa.Table]:
    """Every record kind of a datakit output folder as one memory-mapped table (no copy into RAM)."""
    out_dir = Path(out_dir)
    if not (out_dir / "manifest.json").exists():
        raise FileNotFoundError(f"{out_dir}: no manifest.json (not a finished datakit build)")
    tables = {}
    for kind in KINDS:
        parts = []
        for path in sorted((out_dir / kind).glob("part-*.arrow")):
            parts.append(pa.ipc.open_stream(pa.memory_map(str(path))).read_all())
        tables[kind] = pa.concat_tables(parts) if parts else schema(kind).empty_table()
        if not tables[kind].schema.equals(schema(kind)):
            raise ValueError(f"{out_dir}/{kind}: shard schema differs from datakit.records ({tables[kind].schema})")
    return tables


def dataset_index(table: pa.Table) -> dict[str, pa.Array]:
    """Row positions of each dataset (the trainer draws every batch from one dataset)."""
    col = table.column("dataset")
    return {name: pc.indices_nonzero(pc.equal(col, name)) for name in pc.unique(col).to_pylist()}
