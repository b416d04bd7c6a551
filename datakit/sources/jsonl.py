"""JSONL (and a top-level JSON array): block-parsed by Arrow, with the lines Arrow refuses parsed one by one so a bad
line costs one row.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pjson

from datakit.sources.chunks import (
    Chunk,
    ColumnSpec,
    bad_row,
    project,
    row_range,
    truncated_chunk,
)
from datakit.sources.files import open_bytes, stream_break
from datakit.sources.syntax import SourceError


def read_jsonl(path: Path, shown: str, need: ColumnSpec, batch_rows: int, offset: int):
    """Read newline-delimited JSON in byte blocks: pyarrow's parser on clean blocks, line by line otherwise.

    Row indices are line numbers - 1 (plus `offset`); returns the number of lines read.
    """
    block_bytes = 1 << 23
    line_no = 0
    with open_bytes(path) as fh:
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
        if stream_break(fh) is not None:
            yield truncated_chunk(shown, need, offset + line_no, stream_break(fh))
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
