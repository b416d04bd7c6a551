"""Source readers: local JSONL / CSV / TSV / Parquet, Hugging Face datasets, DuckDB SQL.

Every reader streams Arrow tables of at most `batch_rows` rows (a multi-GB file never
sits in memory), projected to the columns the adapter needs, with each row's 0-based
index within the source. Rows that cannot be parsed are reported as quarantine
entries; the read goes on.
"""
from __future__ import annotations

import glob
import gzip
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from datakit.recipe import SourceConfig

EXTENSIONS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet",
}
RAW_LIMIT = 2000  # characters of a bad row kept in quarantine


class SourceError(ValueError):
    """A source cannot be read at all (missing file, missing column): a recipe problem."""


@dataclass
class Chunk:
    """A batch of raw source rows."""

    table: pa.Table
    file: str
    rows: pa.Array  # int64: index of each row within the source
    quarantine: list[dict[str, Any]] = field(default_factory=list)


def bad_row(file: str, row: int, field_: str, reason: str, detail: str, raw: Any) -> dict[str, Any]:
    """One quarantine entry (dataset is filled in by the pipeline)."""
    if not isinstance(raw, str):
        raw = json.dumps(raw, ensure_ascii=False, default=str)
    return {"file": file, "row": row, "field": field_, "reason": reason, "detail": detail, "raw": raw[:RAW_LIMIT]}


def resolve_files(spec: str | list[str], base_dir: Path) -> list[Path]:
    """Expand files, globs and folders (relative to the recipe) into a sorted file list."""
    files: list[Path] = []
    for item in [spec] if isinstance(spec, str) else spec:
        p = Path(item).expanduser()
        p = p if p.is_absolute() else base_dir / p
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and _format_of(f) is not None)
        elif any(ch in str(p) for ch in "*?["):
            found = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
        else:
            found = [p] if p.exists() else []
        if not found:
            raise SourceError(f"no input file matches {item!r} (looked in {p})")
        files += found
    return files


def _format_of(path: Path) -> str | None:
    suffixes = [s for s in path.suffixes if s not in (".gz", ".bz2", ".zst")]
    return EXTENSIONS.get(suffixes[-1].lower()) if suffixes else None


def _display(path: Path, base_dir: Path) -> str:
    try:
        return str(path.relative_to(base_dir))
    except ValueError:
        return str(path)


def read_source(src: SourceConfig, base_dir: Path, need: "ColumnSpec", batch_rows: int = 50_000) -> Iterator[Chunk]:
    """Stream a source as Chunks projected to the columns in `need`.

    A column that a file's schema lacks is an error unless it is optional (then it reads as
    nulls); JSONL has no schema, so a missing key there is a per-row problem for the adapter.
    """
    if src.hf is not None:
        chunks = _read_hf(src, base_dir, need, batch_rows)
    elif src.sql is not None:
        chunks = _read_sql(src.sql, base_dir, need, batch_rows)
    else:
        chunks = _read_files(src, base_dir, need, batch_rows)
    seen = 0
    for chunk in chunks:
        if src.limit is not None and seen + chunk.table.num_rows > src.limit:
            keep = src.limit - seen
            chunk = Chunk(chunk.table.slice(0, keep), chunk.file, chunk.rows.slice(0, keep), chunk.quarantine)
        seen += chunk.table.num_rows
        yield chunk
        if src.limit is not None and seen >= src.limit:
            return


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


def _read_files(src: SourceConfig, base_dir: Path, need: ColumnSpec, batch_rows: int) -> Iterator[Chunk]:
    offset = 0
    for path in resolve_files(src.path, base_dir):  # type: ignore[arg-type]
        fmt = src.format or _format_of(path)
        if fmt is None:
            raise SourceError(f"{path}: cannot tell the format from the extension; set `format:`")
        shown = _display(path, base_dir)
        if fmt == "jsonl":
            offset += yield from _read_jsonl(path, shown, need, batch_rows, offset)
        elif fmt in ("csv", "tsv"):
            offset += yield from _read_csv(path, shown, need, batch_rows, offset, src, fmt)
        else:
            offset += yield from _read_parquet(path, shown, need, batch_rows, offset)


def row_range(start: int, n: int) -> pa.Array:
    """int64 positions start .. start + n - 1."""
    return pa.array(np.arange(start, start + n, dtype=np.int64))


def project(table: pa.Table, columns: list[str]) -> pa.Table:
    """Select `columns` in order; absent ones become all-null columns."""
    arrays = [table.column(c) if c in table.column_names else pa.nulls(table.num_rows) for c in columns]
    return pa.Table.from_arrays(arrays, names=columns)


# ---------------------------------------------------------------- JSONL
def _open_bytes(path: Path) -> io.BufferedIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _read_jsonl(path: Path, shown: str, need: ColumnSpec, batch_rows: int, offset: int):
    """Read newline-delimited JSON in byte blocks: pyarrow's parser on clean blocks, line by line otherwise.

    Row indices are line numbers - 1 (plus `offset`); returns the number of lines read.
    """
    block_bytes = 1 << 23
    line_no = 0
    with _open_bytes(path) as fh:
        while True:
            block = fh.read(block_bytes)
            if not block:
                break
            if not block.endswith(b"\n"):
                block += fh.readline()
            table, rows, bad, n_lines = _parse_jsonl_block(block, line_no, shown, need)
            rows = pc.add(rows, offset)
            for q in bad:
                q["row"] += offset
            line_no += n_lines
            for start in range(0, max(table.num_rows, 1), batch_rows):
                yield Chunk(table.slice(start, batch_rows), shown, rows.slice(start, batch_rows),
                            bad if start == 0 else [])
    return line_no


def _parse_jsonl_block(block: bytes, first_line: int, shown: str, need: ColumnSpec):
    body = block[:-1] if block.endswith(b"\n") else block
    n_lines = body.count(b"\n") + 1
    if body:
        try:
            # 1 MiB parse blocks run on every core; a row longer than that fails and takes the slow path
            table = pjson.read_json(io.BytesIO(block), read_options=pjson.ReadOptions(block_size=1 << 20))
            if table.num_rows == n_lines:  # pyarrow skips blank lines: then row numbers would shift
                table = project(table, need.names)
                table.validate(full=True)  # catches invalid UTF-8, which the parser lets through
                return table, row_range(first_line, n_lines), [], n_lines
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
    return (*_parse_jsonl_lines(block, first_line, shown, need), n_lines)


def _parse_jsonl_lines(block: bytes, first_line: int, shown: str, need: ColumnSpec):
    """Slow path: one line at a time, quarantining what does not parse."""
    good: list[dict[str, Any]] = []
    rows: list[int] = []
    bad: list[dict[str, Any]] = []
    for i, raw in enumerate(block.split(b"\n")):
        if not raw.strip():
            continue
        row = first_line + i
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.append(bad_row(shown, row, "", "bad_utf8", f"line {row + 1}: {exc.reason} at byte {exc.start}",
                               raw.decode("utf-8", "replace")))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            bad.append(bad_row(shown, row, "", "bad_json", f"line {row + 1}: {exc.msg} (column {exc.colno})", text))
            continue
        if not isinstance(obj, dict):
            bad.append(bad_row(shown, row, "", "bad_json", f"line {row + 1}: a row must be a JSON object", text))
            continue
        good.append({c: obj.get(c) for c in need.names})
        rows.append(row)
    table, keep, typebad = _columns_from_rows(good, need, shown, rows)
    return table, pa.array([rows[i] for i in keep], pa.int64()), bad + typebad


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return type(v).__name__


def _columns_from_rows(rows: list[dict[str, Any]], need: ColumnSpec, shown: str, idx: list[int]):
    """Build a table from row dicts. In a column of mixed JSON types the minority rows are
    quarantined, except in scalar columns (scores, labels), where numbers become text."""
    drop: dict[int, dict[str, Any]] = {}
    columns = need.names
    for c in columns:
        kinds: dict[str, int] = {}
        for r in rows:
            if r[c] is not None:
                kinds[_kind(r[c])] = kinds.get(_kind(r[c]), 0) + 1
        if len(kinds) > 1 and c in need.scalar and set(kinds) <= {"str", "number", "bool"}:
            for r in rows:
                if r[c] is not None and not isinstance(r[c], str):
                    r[c] = json.dumps(r[c])
        elif len(kinds) > 1:
            major = max(kinds, key=lambda k: kinds[k])
            for i, r in enumerate(rows):
                if r[c] is not None and _kind(r[c]) != major and i not in drop:
                    drop[i] = bad_row(shown, idx[i], c, "wrong_type",
                                      f"field {c!r}: {_kind(r[c])} where the other rows have {major}", r)
    keep = [i for i in range(len(rows)) if i not in drop]
    kept = [rows[i] for i in keep]
    arrays = []
    for c in columns:
        values = [r[c] for r in kept]
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays.append(pa.array([None if v is None else json.dumps(v, ensure_ascii=False) for v in values]))
    return pa.Table.from_arrays(arrays, names=columns), keep, list(drop.values())


# ---------------------------------------------------------------- CSV / TSV
def _read_csv(path: Path, shown: str, need: ColumnSpec, batch_rows: int, offset: int, src: SourceConfig, fmt: str):
    """Stream CSV/TSV as strings (no type guessing that a later block could contradict); returns rows read."""
    opts = src.csv
    delimiter = opts.delimiter or ("\t" if fmt == "tsv" else ",")
    bad: list[dict[str, Any]] = []

    def on_invalid(row: pcsv.InvalidRow) -> str:
        bad.append(bad_row(shown, -1, "", "malformed_row",
                           f"expected {row.expected_columns} fields, found {row.actual_columns}", row.text))
        return "skip"

    layout = dict(delimiter=delimiter, quote_char=opts.quote_char, escape_char=opts.escape_char,
                  newlines_in_values=opts.quote_char is not False)
    parse = pcsv.ParseOptions(**layout, invalid_row_handler=on_invalid)
    read = pcsv.ReadOptions(block_size=1 << 22, column_names=opts.column_names,
                            autogenerate_column_names=not opts.header and not opts.column_names)
    columns = need.check(shown, _csv_header(path, pcsv.ParseOptions(**layout, invalid_row_handler=lambda r: "skip"), read))
    convert = pcsv.ConvertOptions(column_types={c: pa.binary() for c in columns}, include_columns=columns,
                                  strings_can_be_null=False, quoted_strings_can_be_null=False,
                                  null_values=[])
    seen = 0
    try:
        reader = pcsv.open_csv(pa.input_stream(str(path), compression="detect"), read_options=read,
                               parse_options=parse, convert_options=convert)
        for batch in reader:
            table = pa.Table.from_batches([batch])
            table, keep, undecodable = _decode_utf8(table, shown, offset + seen)
            table = project(table, need.names)
            rows = pc.add(keep, offset + seen)
            seen += batch.num_rows
            for start in range(0, max(table.num_rows, 1), batch_rows):
                yield Chunk(table.slice(start, batch_rows), shown, rows.slice(start, batch_rows),
                            (bad + undecodable) if start == 0 else [])
                bad = []
    except pa.ArrowInvalid as exc:
        raise SourceError(f"{shown}: cannot parse as {fmt.upper()} after data row {seen}: {exc}") from None
    if bad:
        yield Chunk(project(pa.table({}), need.names), shown, pa.array([], pa.int64()), bad)
    return seen


def _csv_header(path: Path, parse: pcsv.ParseOptions, read: pcsv.ReadOptions) -> list[str]:
    peek = pcsv.open_csv(pa.input_stream(str(path), compression="detect"), read_options=read, parse_options=parse)
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


# ---------------------------------------------------------------- Parquet
def _read_parquet(path: Path, shown: str, need: ColumnSpec, batch_rows: int, offset: int):
    pf = pq.ParquetFile(path)
    columns = need.check(shown, pf.schema_arrow.names)
    seen = 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
        start = offset + seen
        table = project(pa.Table.from_batches([batch]), need.names)
        yield Chunk(table, shown, row_range(start, batch.num_rows))
        seen += batch.num_rows
    return seen


# ---------------------------------------------------------------- Hugging Face datasets
def _read_hf(src: SourceConfig, base_dir: Path, need: ColumnSpec, batch_rows: int) -> Iterator[Chunk]:
    import datasets  # heavy: imported only when a recipe uses the hub

    hf = src.hf
    assert hf is not None
    local = Path(hf.path).expanduser()
    local = local if local.is_absolute() else base_dir / local
    if (local / "dataset_info.json").exists() or (local / "dataset_dict.json").exists():
        ds = datasets.load_from_disk(str(local))
        if isinstance(ds, datasets.DatasetDict):
            if hf.split not in ds:
                raise SourceError(f"{hf.path}: no split {hf.split!r} (splits: {', '.join(ds)})")
            ds = ds[hf.split]
        shown = _display(local, base_dir)
    else:
        target = str(local) if local.exists() else hf.path
        ds = datasets.load_dataset(target, hf.name, split=hf.split, streaming=hf.streaming,
                                   revision=hf.revision, data_files=hf.data_files)
        shown = f"hf:{hf.path}" + (f"/{hf.name}" if hf.name else "") + f":{hf.split}"
    if ds.column_names is not None:  # None for some streaming datasets until read
        ds = ds.select_columns(need.check(shown, list(ds.column_names)))
    seen = 0
    if isinstance(ds, datasets.IterableDataset):
        for batch in ds.iter(batch_size=batch_rows):
            table = project(pa.Table.from_pydict(batch), need.names)
            yield Chunk(table, shown, row_range(seen, table.num_rows))
            seen += table.num_rows
    else:
        for table in ds.with_format("arrow").iter(batch_size=batch_rows):
            table = project(table, need.names)
            yield Chunk(table, shown, row_range(seen, table.num_rows))
            seen += table.num_rows


# ---------------------------------------------------------------- DuckDB SQL
def _read_sql(sql: str, base_dir: Path, need: ColumnSpec, batch_rows: int) -> Iterator[Chunk]:
    import duckdb

    con = duckdb.connect()
    con.execute("SET file_search_path = ?", [str(base_dir)])
    try:
        rel = con.sql(sql)
        if rel is None:
            raise SourceError("sql source: the statement returns no rows (use a SELECT)")
        reader = rel.to_arrow_reader(batch_rows) if hasattr(rel, "to_arrow_reader") else rel.fetch_record_batch(batch_rows)
    except duckdb.Error as exc:
        raise SourceError(f"sql source failed: {exc}") from None
    need.check("sql query", reader.schema.names)
    seen = 0
    for batch in reader:
        table = project(pa.Table.from_batches([batch]), need.names)
        yield Chunk(table, "sql", row_range(seen, table.num_rows))
        seen += table.num_rows
    con.close()
