"""`filter`: drop records whose texts are too short or too long (in characters or words)."""
from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datakit.records import MAIN_TEXTS
from datakit.steps.base import Step, StepConfig, Stream, register


class FilterConfig(StepConfig):
    type: Literal["filter"] = "filter"
    kinds: list[Literal["retrieval", "pair", "classification", "passage"]] | None = None  # default: all
    fields: list[str] | None = None  # default: the kind's texts (query+positive, text_a+text_b, text)
    min_chars: int = 1
    max_chars: int | None = None
    min_words: int | None = None
    max_words: int | None = None
    drop_identical: bool = True  # retrieval: query == positive


@register
class Filter(Step):
    name = "filter"
    Config = FilterConfig
    parallel_safe = True
    config: FilterConfig

    def run(self, stream: Stream) -> Stream:
        for kind, table in stream:
            if self.config.kinds is None or kind in self.config.kinds:
                table = self._filter(kind, table)
            self.kept += table.num_rows
            if table.num_rows:
                yield kind, table

    def _filter(self, kind: str, table: pa.Table) -> pa.Table:
        cfg = self.config
        checks: list[tuple[pa.Array, str]] = []
        for name in cfg.fields or MAIN_TEXTS[kind]:
            if name not in table.column_names or not pa.types.is_string(table.schema.field(name).type):
                continue
            col = table.column(name).combine_chunks()
            chars = pc.utf8_length(col)
            if cfg.min_chars:
                checks.append((pc.less(chars, cfg.min_chars), f"too_short:{name}"))
            if cfg.max_chars is not None:
                checks.append((pc.greater(chars, cfg.max_chars), f"too_long:{name}"))
            if cfg.min_words is not None or cfg.max_words is not None:
                words = pc.count_substring_regex(col, r"\S+")
                if cfg.min_words is not None:
                    checks.append((pc.less(words, cfg.min_words), f"too_short:{name}"))
                if cfg.max_words is not None:
                    checks.append((pc.greater(words, cfg.max_words), f"too_long:{name}"))
        if kind == "retrieval" and cfg.drop_identical:
            checks.append((_same_text(table.column("query"), table.column("positive")), "query_equals_positive"))
        drop = pa.array(np.zeros(table.num_rows, dtype=bool))
        for mask, reason in checks:  # the first failing check names the reason
            new = pc.and_(mask, pc.invert(drop))
            n = pc.sum(new).as_py() or 0
            if n:
                self.dropped[reason] += n
            drop = pc.or_(drop, mask)
        return table.filter(pc.invert(drop))


def _same_text(a: pa.ChunkedArray, b: pa.ChunkedArray) -> pa.Array:
    """Equal ignoring case and surrounding whitespace; strings are only copied where lengths are close."""
    a, b = a.combine_chunks(), b.combine_chunks()
    close = pc.less_equal(pc.abs(pc.subtract(pc.binary_length(a), pc.binary_length(b))), 8)
    out = np.zeros(len(a), dtype=bool)
    idx = pc.indices_nonzero(close)
    if len(idx):
        norm_a = pc.utf8_lower(pc.utf8_trim_whitespace(a.take(idx)))
        norm_b = pc.utf8_lower(pc.utf8_trim_whitespace(b.take(idx)))
        out[idx.to_numpy()] = pc.equal(norm_a, norm_b).to_numpy(zero_copy_only=False)
    return pa.array(out)
