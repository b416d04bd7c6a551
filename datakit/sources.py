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
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
from pydantic import Field, field_validator, model_validator

from embedkit.configfile import Strict

EXTENSIONS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet",
}
RAW_LIMIT = 2000  # characters of a bad row kept in quarantine


class SourceError(ValueError):
    """A source cannot be read at all (missing file, missing column, a path outside the sandbox)."""


# ---------------------------------------------------------------- the source syntax (recipes and task files)
class CsvOptions(Strict):
    delimiter: str | None = Field(None, description="default: ',' ('\\t' for .tsv)")
    quote_char: str | Literal[False] = '"'
    escape_char: str | Literal[False] = False
    header: bool = True
    column_names: list[str] | None = None


class HFSource(Strict):
    path: str = Field(..., description="hub id, local dataset folder (save_to_disk) or data folder")
    name: str | None = None
    split: str = "train"
    streaming: bool = False
    revision: str | None = None
    data_files: str | list[str] | dict[str, Any] | None = None


class SourceFields(Strict):
    """Where a source's rows come from and how they are read: the syntax recipes and eval task files share."""

    path: str | list[str] | None = None
    hf: HFSource | None = None
    sql: str | None = None
    format: Literal["jsonl", "csv", "tsv", "parquet"] | None = None
    csv: CsvOptions = CsvOptions()
    columns: dict[str, str] = {}
    where: dict[str, Any] = Field({}, description="column -> value or list of values: only rows that match every "
                                  "column are read (compared as text), e.g. {split: test}")
    limit: int | None = Field(None, gt=0)

    @field_validator("where")
    @classmethod
    def _scalar_values(cls, where: dict[str, Any]) -> dict[str, Any]:
        for column, value in where.items():
            values = value if isinstance(value, list) else [value]
            if not values or any(isinstance(v, (dict, list)) or v is None for v in values):
                raise ValueError(f"where.{column}: give a value or a list of values (text, numbers, true/false)")
        return where

    def where_values(self) -> dict[str, list[str]]:
        """`where` with every value as the text it is compared with."""
        return {c: [_as_text(v) for v in (vs if isinstance(vs, list) else [vs])] for c, vs in self.where.items()}

    def locations(self) -> list[str]:
        """Which of path, hf, sql are given."""
        return [k for k in ("path", "hf", "sql") if getattr(self, k) is not None]


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class SourceLocation(SourceFields):
    """Source fields with exactly one location."""

    @model_validator(mode="after")
    def _one_location(self) -> "SourceLocation":
        given = self.locations()
        if len(given) != 1:
            raise ValueError(f"give exactly one of path, hf, sql (got {', '.join(given) or 'none'})")
        return self


# ---------------------------------------------------------------- the sandbox
@dataclass(frozen=True)
class Sandbox:
    """Where a recipe (or an eval task file) may read: its own folder, and the files and folders it lists under
    `allow_paths`. Recipes are shared; a shared recipe must not read `/etc/passwd` into a corpus. Every path a
    source names (`path:`, a local `hf:` folder, the files recipe SQL reads, a mining pool) resolves (symlinks
    followed) inside one of these roots, or the source fails naming it."""

    base_dir: Path  # relative paths resolve against it
    allowed: tuple[Path, ...] = ()  # resolved allow_paths
    owner: str = "recipe"  # whose folder it is, for messages ("task file")

    @classmethod
    def of(cls, base_dir: str | Path, allow_paths: list[str] | tuple[str, ...] = (),
           owner: str = "recipe") -> "Sandbox":
        base = Path(base_dir).expanduser().resolve()
        allowed = []
        for item in allow_paths:
            p = Path(item).expanduser()
            allowed.append((p if p.is_absolute() else base / p).resolve())
        return cls(base, tuple(allowed), owner)

    @classmethod
    def anywhere(cls, base_dir: str | Path) -> "Sandbox":
        """No limit (the user's own command-line arguments, not a shared file); relative paths from `base_dir`."""
        return cls(Path(base_dir).expanduser().resolve(), (Path("/"),), "command")

    @property
    def roots(self) -> tuple[Path, ...]:
        return (self.base_dir, *self.allowed)

    def absolute(self, item: str | Path) -> Path:
        """`item` as an absolute path (relative to `base_dir`), not yet checked."""
        p = Path(item).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def allows(self, path: Path) -> bool:
        real = path.resolve()
        return any(real == root or root in real.parents for root in self.roots)

    def check(self, path: Path, what: str) -> Path:
        """`path` if it resolves inside a root; else a SourceError naming it and how to allow it."""
        if not self.allows(path):
            real = path.resolve()
            shown = f"{path} (-> {real})" if real != path else str(path)
            raise SourceError(f"{what}: {shown} is outside the {self.owner}'s folder {self.base_dir}"
                              + (f" and its allow_paths ({', '.join(map(str, self.allowed))})" if self.allowed else "")
                              + f"; a {self.owner} reads only its own folder and the paths it lists under "
                              "`allow_paths:`")
        return path


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
class InputFiles:
    """The files a `path:` names, and the files of its folders that no reader takes (listed, never silently
    skipped: they go to the manifest's inputs and the build's summary)."""

    files: list[Path]
    skipped: list[dict[str, str]] = field(default_factory=list)  # {file, reason}


def input_files(spec: str | list[str], sandbox: Sandbox) -> InputFiles:
    """Expand files, globs and folders (relative to the recipe) into a sorted file list, each inside the sandbox."""
    found_all = InputFiles([])
    for item in [spec] if isinstance(spec, str) else spec:
        p = sandbox.absolute(item)
        if p.is_dir():
            sandbox.check(p, f"path {item!r}")
            found = []
            for f in _folder_files(p, sandbox, found_all.skipped):
                if _format_of(f) is None:
                    kind = "".join(f.suffixes) or "a file without an extension"
                    found_all.skipped.append({"file": _display(f, sandbox.base_dir), "reason": f"no reader for {kind}"})
                else:
                    found.append(f)
        elif any(ch in str(p) for ch in "*?["):
            found = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
            if not found:
                sandbox.check(Path(glob_prefix(str(p))), f"path {item!r}")
        else:
            found = [p] if p.exists() else []
        if not found:
            raise SourceError(f"no input file matches {item!r} (looked in {p})")
        for f in found:
            sandbox.check(f, f"path {item!r}")
        for f in [f for f in found if f.stat().st_size == 0]:  # no rows, no header: nothing to read or lose
            found_all.skipped.append({"file": _display(f, sandbox.base_dir), "reason": "empty file (0 bytes)"})
            found.remove(f)
        found_all.files += found
    return found_all


def _folder_files(folder: Path, sandbox: Sandbox, skipped: list[dict[str, str]]) -> list[Path]:
    """Every file below `folder`, sorted, following symbolic links to folders that stay inside the sandbox (each
    real folder once: a link cycle ends); a linked folder outside it is listed in `skipped`, never read."""
    files: list[Path] = []
    seen = {folder.resolve()}
    for root, dirs, names in os.walk(folder, followlinks=True):
        here = Path(root)
        for d in list(dirs):
            sub = here / d
            if sub.is_symlink():
                real = sub.resolve()
                if not sandbox.allows(sub):
                    skipped.append({"file": _display(sub, sandbox.base_dir),
                                    "reason": f"a link to the folder {real}, outside the {sandbox.owner}'s folder "
                                              "and allow_paths: not read"})
                    dirs.remove(d)
                    continue
                if real in seen:
                    dirs.remove(d)  # a folder already walked (or a link cycle)
                    continue
                seen.add(real)
        files += [here / n for n in names if (here / n).is_file()]
    return sorted(files)


def file_digest(path: Path) -> str:
    """xxh3_128 of a file's bytes (1 MiB reads): an edit that keeps the size and mtime still shows. (A checksum,
    not a cryptographic hash: it tells an edit from no edit, ten times faster than blake2b.)"""
    import xxhash

    h = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_files(spec: str | list[str], sandbox: Sandbox) -> list[Path]:
    return input_files(spec, sandbox).files


def glob_prefix(pattern: str) -> str:
    """The folder part of a glob pattern before its first wildcard."""
    head = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    return head if head.endswith("/") or not head else str(Path(head).parent)


def _format_of(path: Path) -> str | None:
    suffixes = [s for s in path.suffixes if s not in (".gz", ".bz2", ".zst")]
    return EXTENSIONS.get(suffixes[-1].lower()) if suffixes else None


def _display(path: Path, base_dir: Path) -> str:
    try:
        return str(path.relative_to(base_dir))
    except ValueError:
        return str(path)


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
        chunks = _read_hf(src.hf, sandbox, need, batch_rows)
    elif src.sql is not None:
        chunks = _read_sql(src.sql, sandbox, need, batch_rows)
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


def _read_files(src: SourceFields, sandbox: Sandbox, need: ColumnSpec, batch_rows: int) -> Iterator[Chunk]:
    offset = 0
    for path in resolve_files(src.path, sandbox):  # type: ignore[arg-type]  # (empty files are listed as skipped)
        fmt = src.format or _format_of(path)
        if fmt is None:
            raise SourceError(f"{path}: cannot tell the format from the extension; set `format:`")
        shown = _display(path, sandbox.base_dir)
        try:
            if fmt == "jsonl":
                offset += yield from _read_jsonl(path, shown, need, batch_rows, offset)
            elif fmt in ("csv", "tsv"):
                offset += yield from _read_csv(path, shown, need, batch_rows, offset, src, fmt)
            else:
                offset += yield from _read_parquet(path, shown, need, batch_rows, offset)
        except (pa.ArrowException, UnicodeError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            # a file no reader can make sense of: name it (the rows of earlier files are not lost: the build fails
            # before anything is published, and says which file to fix or remove)
            raise SourceError(f"{shown}: cannot be read as {fmt} ({type(exc).__name__}: {str(exc).splitlines()[0]})") \
                from None


def row_range(start: int, n: int) -> pa.Array:
    """int64 positions start .. start + n - 1."""
    return pa.array(np.arange(start, start + n, dtype=np.int64))


def project(table: pa.Table, columns: list[str]) -> pa.Table:
    """Select `columns` in order; absent ones become all-null columns."""
    arrays = [table.column(c) if c in table.column_names else pa.nulls(table.num_rows) for c in columns]
    return pa.Table.from_arrays(arrays, names=columns)


# ---------------------------------------------------------------- compressed input
class TolerantGzip(io.RawIOBase):
    """A gzip stream that ends cleanly where the file is truncated or corrupt: it returns the bytes before the
    break up to the last complete line (the partial line after it is dropped), and records where it broke
    (`broken`)."""

    def __init__(self, path: Path):
        self._gz = gzip.open(path, "rb")
        self._ready = b""  # complete lines, ready to hand out
        self._pending = b""  # the bytes after the last newline, held until more data (or a clean end)
        self._done = False
        self.delivered = 0
        self.broken: dict[str, Any] | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        if not self._ready:
            self._fill()
        n = min(len(buf), len(self._ready))
        buf[:n] = self._ready[:n]
        self._ready = self._ready[n:]
        self.delivered += n
        return n

    def _fill(self) -> None:
        while not self._ready and not self._done:
            try:
                data = self._gz.read1(1 << 16)  # what is decompressed so far: nothing before a break is lost
            except (EOFError, OSError, zlib.error) as exc:
                self.broken = {"byte": self.delivered, "error": str(exc) or type(exc).__name__}
                self._done, self._pending = True, b""  # the cut line is dropped
                return
            if not data:  # a clean end: the last line may lack its newline
                self._ready, self._pending, self._done = self._pending, b"", True
                return
            data = self._pending + data
            cut = data.rfind(b"\n") + 1
            if cut == 0 and len(data) >= 1 << 24:  # no newline in 16 MiB: not line-based, let it through
                cut = len(data)
            self._ready, self._pending = data[:cut], data[cut:]

    def close(self) -> None:
        self._gz.close()
        super().close()


def _open_bytes(path: Path) -> io.BufferedIOBase:
    if path.suffix == ".gz":
        return io.BufferedReader(TolerantGzip(path), buffer_size=1 << 20)  # type: ignore[return-value]
    return open(path, "rb")


def _broken(fh: Any) -> dict[str, Any] | None:
    raw = getattr(fh, "raw", fh)
    return getattr(raw, "broken", None)


def truncated_chunk(shown: str, need: "ColumnSpec", row: int, info: dict[str, Any]) -> Chunk:
    """The quarantine entry for a stream that broke: the rows before `row` were kept."""
    detail = (f"the compressed stream broke after {info['byte']:,} decompressed bytes, before row {row} "
              f"({info['error']}); the rows before it were kept, the rest of the file is lost")
    entry = bad_row(shown, row, "", "truncated_input", detail, "")
    return Chunk(project(pa.table({}), need.names), shown, pa.array([], pa.int64()), [entry],
                 truncated={"file": shown, "row": row, **info})


# ---------------------------------------------------------------- JSONL


def _read_jsonl(path: Path, shown: str, need: ColumnSpec, batch_rows: int, offset: int):
    """Read newline-delimited JSON in byte blocks: pyarrow's parser on clean blocks, line by line otherwise.

    Row indices are line numbers - 1 (plus `offset`); returns the number of lines read.
    """
    block_bytes = 1 << 23
    line_no = 0
    with _open_bytes(path) as fh:
        if fh.peek(64)[:64].lstrip()[:1] == b"[":  # a .json file holding one JSON array, not JSON lines
            return (yield from _read_json_array(fh, shown, need, batch_rows, offset))
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
        if _broken(fh) is not None:
            yield truncated_chunk(shown, need, offset + line_no, _broken(fh))
    return line_no


def _read_json_array(fh: Any, shown: str, need: ColumnSpec, batch_rows: int, offset: int):
    """A JSON array of objects: row i is item i."""
    try:
        items = json.loads(fh.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"{shown}: starts with '[' but is not a valid JSON array ({exc}); JSON sources are "
                          "JSON lines (one object per line) or one array of objects") from None
    if not isinstance(items, list):
        raise SourceError(f"{shown}: not a JSON array of objects")
    good, idx, bad = [], [], []
    for i, obj in enumerate(items):
        if isinstance(obj, dict):
            good.append({c: obj.get(c) for c in need.names})
            idx.append(offset + i)
        else:
            bad.append(bad_row(shown, offset + i, "", "bad_json", f"array item {i} is not a JSON object", obj))
    for start in range(0, max(len(good), 1), batch_rows):
        table, keep, typebad = _columns_from_rows(good[start: start + batch_rows], need, shown,
                                                  idx[start: start + batch_rows])
        rows = pa.array([idx[start + k] for k in keep], pa.int64())
        yield Chunk(table, shown, rows, (bad if start == 0 else []) + typebad)
    return len(items)


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


def _surrogate(value: Any) -> str | None:
    """Where a parsed JSON value holds a lone surrogate (`\\ud800...`), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"character {exc.start} (U+{ord(value[exc.start]):04X})"
        return None
    if isinstance(value, list):
        return next((w for w in map(_surrogate, value) if w is not None), None)
    if isinstance(value, dict):
        return next((w for w in map(_surrogate, [*value.keys(), *value.values()]) if w is not None), None)
    return None


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
    for i, r in enumerate(rows):  # a JSON escape of a lone surrogate ("\ud800") parses, but is not text
        if i not in drop:
            for c in columns:
                where = _surrogate(r[c])
                if where is not None:
                    drop[i] = bad_row(shown, idx[i], c, "bad_utf8", f"field {c!r}: {where}: a lone surrogate "
                                      "escape, not a Unicode character (the text cannot be stored as UTF-8)",
                                      json.dumps(r, ensure_ascii=True))
                    break
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
class _LineFinder:
    """Where the CSV rows the parser rejected are: (line number, record number), found in order by scanning
    the file's lines and following quotes, so a quoted field spanning lines is one record."""

    def __init__(self, path: Path, quote: str | None):
        self.fh = io.TextIOWrapper(_open_bytes(path), encoding="utf-8", errors="replace", newline="")
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
        raw = _open_bytes(path)
        return pa.PythonFile(raw, mode="r"), raw
    return pa.input_stream(str(path), compression="detect"), None


def _read_csv(path: Path, shown: str, need: ColumnSpec, batch_rows: int, offset: int, src: SourceFields, fmt: str):
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
    broken = _broken(raw) if raw is not None else None
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


# ---------------------------------------------------------------- Parquet
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


# ---------------------------------------------------------------- Hugging Face datasets
def _read_hf(hf: HFSource, sandbox: Sandbox, need: ColumnSpec, batch_rows: int) -> Iterator[Chunk]:
    import datasets  # heavy: imported only when a recipe uses the hub

    local = sandbox.absolute(hf.path)
    if local.exists():
        sandbox.check(local, f"hf.path {hf.path!r}")
    if (local / "dataset_info.json").exists() or (local / "dataset_dict.json").exists():
        ds = datasets.load_from_disk(str(local))
        if isinstance(ds, datasets.DatasetDict):
            if hf.split not in ds:
                raise SourceError(f"{hf.path}: no split {hf.split!r} (splits: {', '.join(ds)})")
            ds = ds[hf.split]
        shown = _display(local, sandbox.base_dir)
    else:
        target = str(local) if local.exists() else hf.path
        try:
            ds = datasets.load_dataset(target, hf.name, split=hf.split, streaming=hf.streaming,
                                       revision=hf.revision, data_files=hf.data_files)
        except Exception as exc:  # noqa: BLE001 - hub, network, auth and dataset-script errors of every kind
            raise SourceError(hf_error(hf, exc)) from None
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


def hf_error(hf: HFSource, exc: BaseException) -> str:
    """One line for a Hugging Face dataset that cannot be opened: unreachable, mistyped, private, or gated."""
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    low = f"{name} {text}".lower()
    if "gated" in low or "401" in low or "403" in low or "unauthorized" in low or "authentication" in low:
        why = "it is private or gated: log in (`hf auth login`) or set HF_TOKEN, and accept its terms on the hub"
    elif "offline" in low or "connection" in low or "resolve" in low or "network" in low or "timed out" in low:
        why = "the hub cannot be reached (offline?); set HF_HUB_OFFLINE=1 to use a cached copy, or give a local folder"
    elif "doesn't exist" in low or "not found" in low or "404" in low or "datasetnotfound" in low:
        why = "no such dataset (mistyped id, or a private one without a token)"
    else:
        why = f"{name}: {text[:300]}"
    return f"hf:{hf.path}" + (f" ({hf.name})" if hf.name else "") + f" split {hf.split!r}: cannot open: {why}"


# ---------------------------------------------------------------- DuckDB SQL
_FILE_FUNCS = r"read_\w+|parquet_\w+|glob|sniff_csv|delta_scan|iceberg_\w+"
_FILE_CALL = re.compile(rf"\b({_FILE_FUNCS})\s*\(\s*", re.I)
_FILE_ARG = re.compile(rf"\b({_FILE_FUNCS})\s*\(\s*('(?:[^']|'')*'|\[[^\]]*\])", re.I)
_FROM_FILE = re.compile(r"\b(FROM|JOIN)\s+('(?:[^']|'')*'|\"(?:[^\"]|\"\")*\")", re.I)
_LITERAL = re.compile(r"'((?:[^']|'')*)'")


def sandbox_sql(sql: str, sandbox: Sandbox) -> tuple[str, list[str], list[str]]:
    """(sql with the files it reads made absolute, folders, files) for a recipe's SQL. The files its table
    functions (read_csv, read_json, read_parquet, glob, ...) and FROM 'file' clauses read must be literal paths
    inside the sandbox (a glob's every match too); DuckDB is then given only the sandbox's roots, so a path built
    at run time cannot leave them either. Anything else is a SourceError naming the path."""
    for m in _FILE_CALL.finditer(sql):
        rest = sql[m.end():m.end() + 1]
        if rest not in ("'", "["):
            raise SourceError(f"sql source: {m.group(1)}(...) must name its files as a string literal or a list of "
                              f"literals (so they can be checked against the recipe's folder and allow_paths)")

    def absolute(m: re.Match, quote: str = "'") -> str:
        raw = m.group(1).replace(quote * 2, quote)
        if "://" in raw:
            raise SourceError(f"sql source: {raw!r}: recipe SQL reads local files only (no network)")
        p = sandbox.absolute(raw)
        what = f"sql source reads {raw!r}"
        if any(ch in raw for ch in "*?["):
            sandbox.check(Path(glob_prefix(str(p))), what)
            for match in glob.glob(str(p), recursive=True):
                sandbox.check(Path(match), what)
        else:
            sandbox.check(p, what)
        return quote + str(p.resolve()).replace(quote, quote * 2) + quote

    def in_args(m: re.Match) -> str:
        head, arg = m.group(0)[: m.start(2) - m.start(0)], m.group(2)
        if arg.startswith('"'):  # FROM "file.csv": DuckDB reads a file named by a quoted identifier too
            if not any(ch in arg for ch in "./"):
                return m.group(0)  # a quoted table or CTE name
            return head + re.sub(r'"((?:[^"]|"")*)"', lambda x: absolute(x, '"'), arg)
        return head + _LITERAL.sub(absolute, arg)

    sql = _FILE_ARG.sub(in_args, sql)
    sql = _FROM_FILE.sub(in_args, sql)
    dirs = [str(r) for r in sandbox.roots if r.is_dir()]
    files = [str(r) for r in sandbox.roots if not r.is_dir()]
    return sql, dirs, files


def locked_connection(dirs: list[str], files: list[str]):
    """A DuckDB connection that can read only `dirs` and `files` (no writes elsewhere, no network, no
    extensions to install), its settings locked."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET allowed_directories = ?", [[d.rstrip("/") + "/" for d in dirs]])
    con.execute("SET allowed_paths = ?", [files])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def check_select(con, sql: str, what: str) -> None:
    """Refuse anything but one SELECT (or WITH ... SELECT) statement."""
    import duckdb

    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise SourceError(f"{what}: not valid SQL: {exc}") from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        refused = [s for s in statements if s.type != duckdb.StatementType.SELECT] or statements
        shown = "; ".join(" ".join(s.query.split())[:80] for s in refused) if refused else "nothing"
        raise SourceError(f"{what}: only a single SELECT (or WITH ... SELECT) statement may run; refused: {shown}")


def _read_sql(sql: str, sandbox: Sandbox, need: ColumnSpec, batch_rows: int) -> Iterator[Chunk]:
    """A recipe's SQL, sandboxed: one SELECT, reading only the recipe's folder and its allow_paths."""
    import duckdb

    sql, dirs, files = sandbox_sql(sql, sandbox)
    con = locked_connection(dirs, files)
    check_select(con, sql, "sql source")
    try:
        rel = con.sql(sql)
        if rel is None:
            raise SourceError("sql source: the statement returns no rows (use a SELECT)")
        reader = arrow_reader(rel, batch_rows)
    except duckdb.PermissionException as exc:
        raise SourceError(f"sql source: {exc} (recipe SQL may read the recipe's folder and its allow_paths; "
                          "nothing else)") from None
    except duckdb.Error as exc:
        raise SourceError(f"sql source failed: {exc}") from None
    need.check("sql query", reader.schema.names)
    seen = 0
    for batch in reader:
        table = project(pa.Table.from_batches([batch]), need.names)
        yield Chunk(table, "sql", row_range(seen, table.num_rows))
        seen += table.num_rows
    con.close()


def arrow_reader(rel: duckdb.DuckDBPyRelation, rows: int) -> pa.RecordBatchReader:
    """A DuckDB relation as Arrow batches of `rows` rows (`to_arrow_reader` since DuckDB 1.4, where
    `fetch_arrow_reader` is deprecated; `fetch_record_batch` before it)."""
    return rel.to_arrow_reader(rows) if hasattr(rel, "to_arrow_reader") else rel.fetch_record_batch(rows)
