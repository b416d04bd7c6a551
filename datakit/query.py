"""DuckDB over an output folder: views `retrieval`, `pair`, `classification`, `quarantine`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from datakit.manifest import SHARD_KINDS, open_tables, read_shards


def connect(out_dir: str | Path, check: bool = True) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per record kind over the (memory-mapped) shards of the
    current build, checked against its manifest first (a folder that is not a finished build fails clearly;
    `check=False` for a build folder its caller has just checked)."""
    tables = open_tables(out_dir, SHARD_KINDS) if check else {k: read_shards(out_dir, k) for k in SHARD_KINDS}
    con = duckdb.connect()
    for kind, table in tables.items():
        con.register(f"_{kind}_arrow", table)
        con.execute(f"CREATE VIEW {kind} AS SELECT * FROM _{kind}_arrow")
    return con


def query(out_dir: str | Path, sql: str, unsafe: bool = False) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one query over the views. Read-only unless `unsafe`: a single SELECT, and no file, network or
    extension access (so no COPY ... TO, ATTACH or reads of other files)."""
    from datakit.sources import check_select

    con = connect(out_dir)
    if not unsafe:
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        check_select(con, sql, "query")
    try:
        rel = con.execute(sql)
        names = [d[0] for d in rel.description] if rel.description else []
        return names, rel.fetchall()
    finally:
        con.close()
