"""What a reader yields: Chunks of raw rows with their positions, quarantine entries for the rows that could not be
read, and the columns an adapter asks for.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from datakit.sources.syntax import SourceError

RAW_LIMIT = 2000  # characters of a bad row kept in quarantine


@dataclass
class Chunk:
    """A batch of raw source rows."""

    table: pa.Table
    file: str
    rows: pa.Array  # int64: index of each row within the source
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    swallowed: int = 0  # CSV lines an unbalanced quote folded into quarantined rows (rows lost, not read)
    truncated: dict[str, Any] | None = None  # the input stream broke here: {file, byte, row, error}


def bad_row(file: str, row: int, field_: str, reason: str, detail: str, raw: Any) -> dict[str, Any]:
    """One quarantine entry (dataset is filled in by the pipeline)."""
    if not isinstance(raw, str):
        raw = json.dumps(raw, ensure_ascii=False, default=str)
    return {"file": file, "row": row, "field": field_, "reason": reason, "detail": detail, "raw": raw[:RAW_LIMIT]}


@dataclass
class ColumnSpec:
    """The source columns an adapter reads."""

    names: list[str]
    optional: set[str] = field(default_factory=set)  # may be absent: read as nulls
    scalar: set[str] = field(default_factory=set)  # numbers and strings may mix (scores, labels): read as text

    def check(self, shown: str, available: list[str]) -> list[str]:
        """Raise if a required column is absent; return the wanted columns that exist."""
        for c in self.names:
            if c not in available and c not in self.optional:
                raise SourceError(f"{shown}: no column {c!r} (columns: {', '.join(available)})")
        return [c for c in self.names if c in available]


def row_range(start: int, n: int) -> pa.Array:
    """int64 positions start .. start + n - 1."""
    return pa.array(np.arange(start, start + n, dtype=np.int64))


def project(table: pa.Table, columns: list[str]) -> pa.Table:
    """Select `columns` in order; absent ones become all-null columns."""
    arrays = [table.column(c) if c in table.column_names else pa.nulls(table.num_rows) for c in columns]
    return pa.Table.from_arrays(arrays, names=columns)


def truncated_chunk(shown: str, need: "ColumnSpec", row: int, info: dict[str, Any]) -> Chunk:
    """The quarantine entry for a stream that broke: the rows before `row` were kept."""
    detail = (f"the compressed stream broke after {info['byte']:,} decompressed bytes, before row {row} "
              f"({info['error']}); the rows before it were kept, the rest of the file is lost")
    entry = bad_row(shown, row, "", "truncated_input", detail, "")
    return Chunk(project(pa.table({}), need.names), shown, pa.array([], pa.int64()), [entry],
                 truncated={"file": shown, "row": row, **info})
