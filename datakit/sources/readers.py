"""Reading a source: `read_source` streams Chunks of at most `batch_rows` rows from local files (JSONL, CSV/TSV,
Parquet), a Hugging Face dataset, or DuckDB SQL, projected to the columns asked for.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datakit.sources.chunks import Chunk, ColumnSpec, project, row_range
from datakit.sources.delimited import read_csv
from datakit.sources.files import format_of, resolve_files, shown_path
from datakit.sources.hub import read_hf
from datakit.sources.jsonl import read_jsonl
from datakit.sources.sandbox import Sandbox
from datakit.sources.sql import read_sql
from datakit.sources.syntax import SourceError, SourceFields


def read_source(src: SourceFields, sandbox: Sandbox, need: "ColumnSpec", batch_rows: int = 50_000) -> Iterator[Chunk]:
    """Stream a source as Chunks projected to the columns in `need`, reading only inside `sandbox`.

    A column that a file's schema lacks is an error unless it is optional (then it reads as
    nulls); JSONL has no schema, so a missing key there is a per-row problem for the adapter.
    """
    wanted = need.names
    if src.where:  # the columns `where` tests are read too (as text), then dropped
        extra = [c for c in src.where if c not in need.names]
        need = ColumnSpec(need.names + extra, need.optional, need.scalar | set(extra))
    if src.hf is not None:
        chunks = read_hf(src.hf, sandbox, need, batch_rows)
    elif src.sql is not None:
        chunks = read_sql(src.sql, sandbox, need, batch_rows)
    else:
        chunks = _read_files(src, sandbox, need, batch_rows)
    seen = 0
    for chunk in chunks:
        if src.where:
            chunk = _select_where(chunk, src.where_values(), wanted)
        if src.limit is not None and seen + chunk.table.num_rows > src.limit:
            keep = src.limit - seen
            chunk = Chunk(chunk.table.slice(0, keep), chunk.file, chunk.rows.slice(0, keep), chunk.quarantine)
        seen += chunk.table.num_rows
        yield chunk
        if src.limit is not None and seen >= src.limit:
            return


def _select_where(chunk: Chunk, where: dict[str, list[str]], columns: list[str]) -> Chunk:
    """The chunk's rows whose `where` columns hold one of the listed values (as text; nulls never match),
    projected back to `columns`."""
    keep = pa.array(np.ones(chunk.table.num_rows, dtype=bool))
    for column, values in where.items():
        arr = chunk.table.column(column)
        if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
            try:
                arr = pc.cast(arr, pa.string())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise SourceError(f"{chunk.file}: where.{column}: the column holds {arr.type}, not text, numbers "
                                  "or true/false") from None
        keep = pc.and_(keep, pc.fill_null(pc.is_in(arr, value_set=pa.array(values, pa.string())), False))
    table = project(chunk.table.filter(keep), columns)
    return Chunk(table, chunk.file, chunk.rows.filter(keep), chunk.quarantine, chunk.swallowed, chunk.truncated)


def _read_files(src: SourceFields, sandbox: Sandbox, need: ColumnSpec, batch_rows: int) -> Iterator[Chunk]:
    offset = 0
    for path in resolve_files(src.path, sandbox):  # type: ignore[arg-type]  # (empty files are listed as skipped)
        fmt = src.format or format_of(path)
        if fmt is None:
            raise SourceError(f"{path}: cannot tell the format from the extension; set `format:`")
        shown = shown_path(path, sandbox.base_dir)
        try:
            if fmt == "jsonl":
                offset += yield from read_jsonl(path, shown, need, batch_rows, offset)
            elif fmt in ("csv", "tsv"):
                offset += yield from read_csv(path, shown, need, batch_rows, offset, src, fmt)
            else:
                offset += yield from _read_parquet(path, shown, need, batch_rows, offset)
        except (pa.ArrowException, UnicodeError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            # a file no reader can make sense of: name it (the rows of earlier files are not lost: the build fails
            # before anything is published, and says which file to fix or remove)
            raise SourceError(f"{shown}: cannot be read as {fmt} ({type(exc).__name__}: {str(exc).splitlines()[0]})") \
                from None


def _read_parquet(path: Path, shown: str, need: ColumnSpec, batch_rows: int, offset: int):
    import pyarrow.parquet as pq  # here: a build without Parquet sources does not pay for its import

    pf = pq.ParquetFile(path)
    columns = need.check(shown, pf.schema_arrow.names)
    seen = 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
        start = offset + seen
        table = project(pa.Table.from_batches([batch]), need.names)
        yield Chunk(table, shown, row_range(start, batch.num_rows))
        seen += batch.num_rows
    return seen
