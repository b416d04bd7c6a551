"""Sources: where a recipe's (or a task file's) rows come from, read inside the recipe's sandbox.

Every reader streams Arrow tables of at most `batch_rows` rows (a multi-GB file never sits in memory), projected
to the columns the adapter needs, with each row's 0-based index within the source. Rows that cannot be parsed are
reported as quarantine entries; the read goes on.

    syntax.py     the source syntax of recipes and task files (SourceFields, CsvOptions, HFSource, SourceLocation)
    sandbox.py    Sandbox: the folders a recipe may read (a security policy: every named path goes through it)
    files.py      a source's files (globs, folders, what no reader takes), digests, opening (tolerant gzip)
    chunks.py     what readers yield: Chunk, quarantine entries (bad_row), ColumnSpec (what an adapter reads)
    readers.py    read_source: the one entry point, choosing a reader by format
    jsonl.py, delimited.py (CSV/TSV), hub.py (Hugging Face datasets), sql.py (DuckDB SQL, sandboxed)
"""
from datakit.sources.chunks import RAW_LIMIT, Chunk, ColumnSpec, bad_row, project, row_range
from datakit.sources.files import InputFiles, file_digest, glob_prefix, input_files, resolve_files
from datakit.sources.readers import read_source
from datakit.sources.sandbox import Sandbox
from datakit.sources.sql import arrow_reader, check_select, locked_connection, sandbox_sql
from datakit.sources.syntax import EXTENSIONS, CsvOptions, HFSource, SourceError, SourceFields, SourceLocation

__all__ = ["EXTENSIONS", "RAW_LIMIT", "Chunk", "ColumnSpec", "CsvOptions", "HFSource", "InputFiles", "Sandbox",
           "SourceError", "SourceFields", "SourceLocation", "arrow_reader", "bad_row", "check_select", "file_digest",
           "glob_prefix", "input_files", "locked_connection", "project", "read_source", "resolve_files", "row_range",
           "sandbox_sql"]
