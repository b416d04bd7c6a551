"""The source syntax of recipes and task files: where rows come from (`path`, `hf`, `sql`), their format and CSV
options, and what `where` selects.
"""
from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from embedkit.configfile import Strict

EXTENSIONS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet",
}


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
