"""CSV and TSV: streamed by Arrow, with rows of the wrong width, undecodable bytes and unbalanced quotes quarantined
one by one.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from datakit.sources.chunks import (
    RAW_LIMIT,
    Chunk,
    ColumnSpec,
    bad_row,
    project,
    truncated_chunk,
)
from datakit.sources.files import open_bytes, stream_break
from datakit.sources.syntax import SourceError, SourceFields


class _LineFinder:
    """Where the CSV rows the parser rejected are: (line number, record number), found in order by scanning
    the file's lines and following quotes, so a quoted field spanning lines is one record."""

    def __init__(self, path: Path, quote: str | None):
        self.fh = io.TextIOWrapper(open_bytes(path), encoding="utf-8", errors="replace", newline="")
        self.quote = quote
        self.line = 0
        self.record = -1
        self.in_quote = False

    def find(self, text: str) -> tuple[int, int] | None:
        first = text.split("\n", 1)[0].rstrip("\r")
        for raw in self.fh:  # goes on from where the previous search stopped
            self.line += 1
            starts = not self.in_quote
            if starts:
                self.record += 1
            if self.quote and raw.count(self.quote) % 2:
                self.in_quote = not self.in_quote
            if starts and raw.rstrip("\r\n") == first:
                for _ in range(text.count("\n")):  # the rejected row's other lines
                    next(self.fh, None)
                    self.line += 1
                self.in_quote = False
                return self.line - text.count("\n"), self.record
        return None

    def close(self) -> None:
        self.fh.close()


SWALLOW_LINES = 10  # a CSV row spanning more lines than this (and 20x the usual) hides an unbalanced quote


def _swallow_detail(lines: int) -> str:
    return (f"this row spans {lines:,} lines: an unbalanced quote probably swallowed the {lines - 1:,} rows after "
            "it; if quotes are not field delimiters in this file, set csv: {quote_char: false}")


def _csv_stream(path: Path) -> tuple[Any, Any]:
    """(stream for pyarrow, the raw handle to ask where a compressed stream broke)."""
    if path.suffix == ".gz":  # our own decompressor: a truncated file ends cleanly and says where
        raw = open_bytes(path)
        return pa.PythonFile(raw, mode="r"), raw
    return pa.input_stream(str(path), compression="detect"), None


def read_csv(path: Path, shown: str, need: ColumnSpec, batch_rows: int, offset: int, src: SourceFields, fmt: str):
    """Stream CSV/TSV as strings (no type guessing that a later block could contradict); returns rows read.

    Rejected rows (wrong field count) are quarantined with their line number; rows after them keep their true
    index. A row spanning many lines (an unbalanced quote) is quarantined as `unbalanced_quote` with the number
    of rows it swallowed."""
    opts = src.csv
    delimiter = opts.delimiter or ("\t" if fmt == "tsv" else ",")
    bad: list[dict[str, Any]] = []
    bad_index: list[int] = []  # data-row indices (within the file) of rejected rows, in order
    header_lines = 1 if opts.header and not opts.column_names else 0
    finder = _LineFinder(path, opts.quote_char or None)
    swallowed = 0

    def on_invalid(row: pcsv.InvalidRow) -> str:
        nonlocal swallowed
        found = finder.find(row.text)
        line = found[0] if found is not None else None
        index = (found[1] - header_lines) if found is not None else (bad_index[-1] + 1 if bad_index else 0)
        bad_index.append(index)
        where = f"line {line}: " if line is not None else ""
        spans = row.text.count("\n") + 1
        if spans > SWALLOW_LINES:
            swallowed += spans - 1
            bad.append(bad_row(shown, offset + index, "", "unbalanced_quote", where + _swallow_detail(spans), row.text))
        else:
            bad.append(bad_row(shown, offset + index, "", "malformed_row",
                               f"{where}expected {row.expected_columns} fields, found {row.actual_columns}", row.text))
        return "skip"

    layout = dict(delimiter=delimiter, quote_char=opts.quote_char, escape_char=opts.escape_char,
                  newlines_in_values=opts.quote_char is not False)
    parse = pcsv.ParseOptions(**layout, invalid_row_handler=on_invalid)
    read = pcsv.ReadOptions(block_size=1 << 22, column_names=opts.column_names,
                            autogenerate_column_names=not opts.header and not opts.column_names)
    header = _csv_header(path, pcsv.ParseOptions(**layout, invalid_row_handler=lambda r: "skip"), read)
    twice = sorted({c for c in header if header.count(c) > 1 and c in need.names})
    if twice:
        raise SourceError(f"{shown}: the header names column(s) {', '.join(map(repr, twice))} more than once; which "
                          "one to read is ambiguous: rename them, or give csv: {column_names: [...]}")
    columns = need.check(shown, header)
    convert = pcsv.ConvertOptions(column_types={c: pa.binary() for c in columns}, include_columns=columns,
                                  strings_can_be_null=False, quoted_strings_can_be_null=False,
                                  null_values=[])
    seen = 0  # good rows so far
    stream, raw = _csv_stream(path)
    try:
        reader = pcsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert)
        for batch in reader:
            table = pa.Table.from_batches([batch])
            # true index of each good row: skip the indices of the rows rejected before it
            b = np.asarray(bad_index, np.int64)
            good = np.arange(seen, seen + batch.num_rows)
            index = good + np.searchsorted(b - np.arange(len(b)), good, side="right")
            table, index, long_rows, lost = _long_rows(table, index, shown, offset)
            swallowed += lost
            table, keep, undecodable = _decode_utf8(table, shown, 0)
            for q in undecodable:  # positions in the table -> true row indices
                q["row"] = offset + int(index[q["row"]])
            index = index[keep.to_numpy()]
            table = project(table, need.names)
            rows = pa.array(index + offset, pa.int64())
            seen += batch.num_rows
            for start in range(0, max(table.num_rows, 1), batch_rows):
                yield Chunk(table.slice(start, batch_rows), shown, rows.slice(start, batch_rows),
                            (bad + long_rows + undecodable) if start == 0 else [], swallowed if start == 0 else 0)
                bad, long_rows, swallowed = [], [], 0
    except (pa.ArrowInvalid, OSError) as exc:
        raise SourceError(f"{shown}: cannot parse as {fmt.upper()} after data row {seen}: {exc}") from None
    finally:
        finder.close()
    if bad or swallowed:
        yield Chunk(project(pa.table({}), need.names), shown, pa.array([], pa.int64()), bad, swallowed)
    broken = stream_break(raw) if raw is not None else None
    total = seen + len(bad_index)
    if broken is not None:
        yield truncated_chunk(shown, need, offset + total, broken)
    return total


def _long_rows(table: pa.Table, index: np.ndarray, shown: str, offset: int):
    """Split off rows spanning far more lines than the others (an unbalanced quote): (table, index, quarantine
    entries, lines they swallowed)."""
    if table.num_rows == 0:
        return table, index, [], 0
    spans = np.ones(table.num_rows, np.int64)
    for col in table.columns:
        spans = np.maximum(spans, 1 + pc.count_substring(col, "\n").to_numpy(zero_copy_only=False))
    limit = max(SWALLOW_LINES, 20 * float(np.median(spans)))
    long = np.nonzero(spans > limit)[0]
    if not len(long):
        return table, index, [], 0
    entries = [bad_row(shown, offset + int(index[i]), "", "unbalanced_quote", _swallow_detail(int(spans[i])),
                       {c: table.column(c)[int(i)].as_py().decode("utf-8", "replace")[:RAW_LIMIT]
                        for c in table.column_names}) for i in long]
    keep = np.setdiff1d(np.arange(table.num_rows), long)
    return table.take(pa.array(keep)), index[keep], entries, int((spans[long] - 1).sum())


def _csv_header(path: Path, parse: pcsv.ParseOptions, read: pcsv.ReadOptions) -> list[str]:
    peek = pcsv.open_csv(_csv_stream(path)[0], read_options=read, parse_options=parse)
    return peek.schema.names


def _decode_utf8(table: pa.Table, shown: str, first_row: int) -> tuple[pa.Table, pa.Array, list[dict[str, Any]]]:
    """Cast binary columns to UTF-8 strings; rows with undecodable bytes are quarantined."""
    n = table.num_rows
    bad_rows: dict[int, dict[str, Any]] = {}
    arrays = []
    for name in table.column_names:
        col = table.column(name)
        try:
            arrays.append(col.cast(pa.string()))
            continue
        except pa.ArrowInvalid:
            pass
        values = []
        for i, v in enumerate(col.to_pylist()):
            try:
                values.append(None if v is None else v.decode("utf-8"))
            except UnicodeDecodeError as exc:
                values.append(None)
                bad_rows.setdefault(i, bad_row(shown, first_row + i, name, "bad_utf8",
                                               f"field {name!r}: {exc.reason} at byte {exc.start}",
                                               v.decode("utf-8", "replace")))
        arrays.append(pa.array(values, pa.string()))
    table = pa.Table.from_arrays(arrays, names=table.column_names)
    keep = pa.array([i for i in range(n) if i not in bad_rows], pa.int64())
    if bad_rows:
        table = table.take(keep)
    return table, keep, list(bad_rows.values())
