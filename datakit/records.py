"""The three canonical record kinds, the passages they can be made from, their Arrow schemas and validation
(pure pyarrow).

Every other module speaks these schemas: adapters emit them, steps transform them,
shards store them and the trainer reads them (this is the only datakit module the
trainer imports).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

Kind = Literal["retrieval", "pair", "classification"]
KINDS: tuple[Kind, ...] = ("retrieval", "pair", "classification")  # what the trainer trains on
# a user's documents cut into passages (the `documents` adapter): not trained on as they are; `generate_queries`
# makes retrieval records from them, and mining and held-out tasks use them as the corpus
PASSAGE = "passage"
STORED_KINDS: tuple[str, ...] = (*KINDS, PASSAGE)
NEGATIVE_ORIGINS = ("given", "mined", "llm")

#: One entry of a record's history: which step made or changed it, and how.
LINEAGE_EVENT = pa.struct(
    [
        pa.field("step", pa.string()),  # e.g. "adapter:qa", "paraphrase", "mine_negatives"
        pa.field("model", pa.string()),  # generator or encoder model, "" when none
        pa.field("prompt_id", pa.string()),  # versioned prompt id, "" when none
        pa.field("detail", pa.string()),  # free text (e.g. "order=ba", "parent=<id>")
    ]
)

#: Where a record came from and what happened to it since.
LINEAGE = pa.struct(
    [
        pa.field("source", pa.string()),  # the recipe's source name
        pa.field("file", pa.string()),  # file, HF dataset id or "sql"
        pa.field("row", pa.int64()),  # 0-based row index within the source
        pa.field("parent_id", pa.string()),  # record this one was derived from, "" for source rows
        pa.field("events", pa.list_(LINEAGE_EVENT)),
    ]
)

_COMMON = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("instruction", pa.string(), nullable=False),
]

SCHEMAS: dict[str, pa.Schema] = {
    "retrieval": pa.schema(
        _COMMON
        + [
            pa.field("query", pa.string(), nullable=False),
            pa.field("positive", pa.string(), nullable=False),
            pa.field("negatives", pa.list_(pa.string()), nullable=False),
            pa.field("negative_origins", pa.list_(pa.string()), nullable=False),
            pa.field("lineage", LINEAGE),
        ]
    ),
    "pair": pa.schema(
        _COMMON
        + [
            pa.field("text_a", pa.string(), nullable=False),
            pa.field("text_b", pa.string(), nullable=False),
            pa.field("score", pa.float64(), nullable=False),
            pa.field("label", pa.string(), nullable=False),
            pa.field("lineage", LINEAGE),
        ]
    ),
    "classification": pa.schema(
        _COMMON
        + [
            pa.field("text", pa.string(), nullable=False),
            pa.field("label", pa.string(), nullable=False),
            pa.field("lineage", LINEAGE),
        ]
    ),
    PASSAGE: pa.schema(
        _COMMON
        + [
            pa.field("text", pa.string(), nullable=False),
            pa.field("title", pa.string(), nullable=False),  # "" when the document has none
            pa.field("doc_id", pa.string(), nullable=False),  # the document's id (its `id` column, else dataset:row)
            pa.field("chunk", pa.int32(), nullable=False),  # the passage's position in its document, from 0
            pa.field("lineage", LINEAGE),
        ]
    ),
}

#: Text fields that must be non-empty, per kind.
TEXT_FIELDS: dict[str, tuple[str, ...]] = {
    "retrieval": ("query", "positive"),
    "pair": ("text_a", "text_b"),
    "classification": ("text", "label"),
    PASSAGE: ("text", "doc_id"),
}

#: The texts that say what a record is about (what filters and dedup compare by default).
MAIN_TEXTS: dict[str, tuple[str, ...]] = {
    "retrieval": ("query", "positive"),
    "pair": ("text_a", "text_b"),
    "classification": ("text",),
    PASSAGE: ("text",),
}

#: Quarantine shard schema: a row that could not become a record, and why.
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string()),
        pa.field("file", pa.string()),
        pa.field("row", pa.int64()),  # 0-based data row (JSONL: line number - 1), -1 if unknown
        pa.field("field", pa.string()),
        pa.field("reason", pa.string()),  # short category: bad_json, missing_field, empty_text, ...
        pa.field("detail", pa.string()),
        pa.field("raw", pa.string()),  # the offending row, truncated
    ]
)


def blank(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """True where a string is empty or only whitespace (no copy of the strings)."""
    return pc.or_(pc.equal(pc.binary_length(col), 0), pc.utf8_is_space(col))


class RecordError(ValueError):
    """A table does not conform to a record schema."""


@dataclass
class Rejected:
    """Rows removed by validation, with the field and reason for each."""

    indices: pa.Array  # int64 positions in the input table
    fields: list[str]
    reasons: list[str]


def schema(kind: str) -> pa.Schema:
    if kind not in SCHEMAS:
        raise RecordError(f"unknown record kind {kind!r}; expected one of {', '.join(STORED_KINDS)}")
    return SCHEMAS[kind]


def empty_table(kind: str) -> pa.Table:
    return schema(kind).empty_table()


def conform(kind: str, table: pa.Table) -> pa.Table:
    """Cast `table` to the kind's schema (same column order); raise naming the first bad column."""
    target = schema(kind)
    missing = [f.name for f in target if f.name not in table.column_names]
    if missing:
        raise RecordError(f"{kind} table lacks column(s) {missing}")
    columns = []
    for field in target:
        col = table.column(field.name)
        if not col.type.equals(field.type):
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise RecordError(
                    f"{kind} column {field.name!r}: expected {field.type}, got {col.type} ({exc})"
                ) from None
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=target)


def validate(kind: str, table: pa.Table) -> tuple[pa.Table, Rejected]:
    """Split a conformed table into valid rows and rejected rows (empty text, NaN score, ...).

    Vectorised with pyarrow compute; the first failing check names each rejected row's field.
    """
    table = conform(kind, table)
    n = table.num_rows
    bad = pa.array([False] * n, pa.bool_()) if n else pa.array([], pa.bool_())
    field_of: list[str | None] = [None] * n
    reason_of: list[str | None] = [None] * n

    def mark(mask: pa.Array, field: str, reason: str) -> None:
        nonlocal bad
        mask = pc.fill_null(mask, True)
        new = pc.and_(mask, pc.invert(bad))
        for i in pc.indices_nonzero(new).to_pylist():
            field_of[i], reason_of[i] = field, reason
        bad = pc.or_(bad, mask)

    for name in ("id", "dataset"):
        mark(pc.equal(pc.binary_length(table.column(name)), 0), name, "empty_text")
    for name in TEXT_FIELDS[kind]:
        col = table.column(name)
        mark(pc.is_null(col), name, "missing_field")
        mark(blank(col), name, "empty_text")
    if kind == "pair":
        score = table.column("score")
        mark(pc.is_null(score), "score", "missing_field")
        mark(pc.invert(pc.is_finite(score)), "score", "bad_score")
    if kind == "retrieval":
        negs = table.column("negatives")
        origins = table.column("negative_origins")
        mark(pc.not_equal(pc.list_value_length(negs), pc.list_value_length(origins)),
             "negative_origins", "length_mismatch")
        mark(_any_item(negs, blank), "negatives", "empty_text")
        mark(_any_item(origins, lambda o: pc.invert(pc.is_in(o, value_set=pa.array(NEGATIVE_ORIGINS)))),
             "negative_origins", "bad_origin")
    bad_idx = pc.indices_nonzero(bad)
    good = table.filter(pc.invert(bad))
    rejected = Rejected(
        indices=bad_idx.cast(pa.int64()),
        fields=[field_of[i] for i in bad_idx.to_pylist()],
        reasons=[reason_of[i] for i in bad_idx.to_pylist()],
    )
    return good, rejected


def _const(value: str | list[str], n: int) -> pa.Array:
    return pa.array(value if isinstance(value, list) else [value] * n, pa.string())


def _any_item(lists: pa.ChunkedArray, test) -> pa.Array:
    """Per row: does any item of its list fail `test` (a vectorised predicate; null items fail)?"""
    lists = lists.combine_chunks()
    out = np.zeros(len(lists), bool)
    flat = pc.list_flatten(lists)
    if len(flat):
        failing = pc.fill_null(test(flat), True).to_numpy(zero_copy_only=False)
        out[pc.list_parent_indices(lists).to_numpy()[failing]] = True
    return pa.array(out)


def lineage_array(
    source: str,
    file: str | list[str],
    rows: "pa.Array | list[int]",
    step: str,
    detail: str | list[str] = "",
    parent_ids: list[str] | None = None,
    model: str = "",
    prompt_id: str = "",
) -> pa.StructArray:
    """Build, column-wise, the lineage of `len(rows)` records that one step created."""
    rows = pa.array(rows, pa.int64()) if not isinstance(rows, pa.Array) else rows.cast(pa.int64())
    n = len(rows)
    event = pa.StructArray.from_arrays(
        [_const(step, n), _const(model, n), _const(prompt_id, n), _const(detail, n)],
        fields=list(LINEAGE_EVENT),
    )
    events = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), event, type=pa.list_(LINEAGE_EVENT))
    return pa.StructArray.from_arrays(
        [_const(source, n), _const(file, n), rows, _const(parent_ids or "", n), events],
        fields=list(LINEAGE),
    )


def replace_columns(table: pa.Table, columns: dict[str, pa.Array | list]) -> pa.Table:
    """`table` with the named columns replaced; each keeps its schema field (type and nullability), so a
    record table stays in its record schema."""
    for name, values in columns.items():
        i = table.schema.get_field_index(name)
        field = table.schema.field(i)
        if not isinstance(values, (pa.Array, pa.ChunkedArray)):
            values = pa.array(values, field.type)
        table = table.set_column(i, field, values)
    return table


def add_event(lineage: pa.Array, step: str, model: str = "", prompt_id: str = "", detail: str | list[str] = "",
              where=None) -> pa.Array:
    """Append one event to the lineage of every record (or of the records where `where` is true); `detail` is one
    string for all, or one per record."""
    lineage = lineage.combine_chunks() if isinstance(lineage, pa.ChunkedArray) else lineage
    rows = lineage.to_pylist()
    for i, r in enumerate(rows):
        if r is not None and (where is None or where[i]):
            text = detail if isinstance(detail, str) else detail[i]
            event = {"step": step, "model": model, "prompt_id": prompt_id, "detail": text}
            r["events"] = list(r["events"] or []) + [event]
    return pa.array(rows, type=LINEAGE)
