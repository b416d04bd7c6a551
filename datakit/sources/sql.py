"""DuckDB SQL sources: the sandbox for the files a query names, and one-statement checks.
"""
from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pyarrow as pa

if TYPE_CHECKING:
    import duckdb
from datakit.sources.chunks import Chunk, ColumnSpec, project, row_range
from datakit.sources.files import glob_prefix
from datakit.sources.sandbox import Sandbox
from datakit.sources.syntax import SourceError

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


def read_sql(sql: str, sandbox: Sandbox, need: ColumnSpec, batch_rows: int) -> Iterator[Chunk]:
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
