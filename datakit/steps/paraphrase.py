"""`paraphrase`: rewrite texts with a different structure and the same meaning (structural diversity).

For each selected record and field (`query` by default; `positive`, `text_a`/`text_b` of pairs, `text` of
classification records also work) the LLM writes `samples` rewrites. Each passes the quality checks (length,
script, refusal/boilerplate, not a near copy of its source or of the record's positive) and a similarity band
with the source under the packaged MiniLM (`min_similarity` keeps the meaning; `max_similarity` rejects
rewrites that change nothing). A query rewrite closer to the record's positive than to the query answers it
instead of rewriting it (`answered`). A kept rewrite becomes a new record (`{id}:para.{field}.{k}`, same dataset,
lineage parent = the source record, event `paraphrase` with the prompt id).
"""
from __future__ import annotations

from typing import Literal

import pyarrow as pa

from datakit.llm import quality
from datakit.records import replace_columns
from datakit.steps.base import register
from datakit.steps.synthesis import SynthesisConfig, SynthesisStep, derived_lineage

FIELD_KIND = {"query": "retrieval", "positive": "retrieval", "text_a": "pair", "text_b": "pair",
              "text": "classification"}


class ParaphraseConfig(SynthesisConfig):
    type: Literal["paraphrase"] = "paraphrase"
    fields: list[Literal["query", "positive", "text_a", "text_b", "text"]] = ["query"]
    min_similarity: float = 0.7  # cosine(source, rewrite) below: the meaning drifted
    max_similarity: float = 0.995  # at or above: no real rewrite


@register
class Paraphrase(SynthesisStep):
    name = "paraphrase"
    Config = ParaphraseConfig
    default_prompt = "paraphrase"
    config: ParaphraseConfig

    def new_records(self, kind: str, table: pa.Table) -> pa.Table | None:
        cfg = self.config
        fields = [f for f in cfg.fields if FIELD_KIND[f] == kind]
        rows = self.select(table) if fields else []
        if not rows:
            return None
        cols = {f: table.column(f).to_pylist() for f in fields}
        positives = table.column("positive").to_pylist() if kind == "retrieval" else None
        jobs = [(r, f, k) for r in rows for f in fields for k in range(cfg.samples)]
        answers = self.generate([{"text": cols[f][r]} for r, f, _ in jobs], [k for _, _, k in jobs])
        passed: list[tuple[int, str, int, str]] = []
        for (r, f, k), answer in zip(jobs, answers):
            text, reason = self.text_of(answer)
            if not reason:
                source = cols[f][r]
                others = [source] + ([positives[r]] if positives is not None and f == "query" else [])
                reason = quality.check(text, source, cfg.quality, copy_of=others)
            if reason:
                self.tally(reason, table, r, cols[f][r], text)
            else:
                passed.append((r, f, k, text))
        sims = self.similarity([cols[f][r] for r, f, _, _ in passed], [t for *_, t in passed])
        if positives is not None:
            to_pos = self.similarity([positives[r] for r, *_ in passed], [t for *_, t in passed])
        kept = []
        for n, (item, sim) in enumerate(zip(passed, sims.tolist())):
            r, f, _, text = item
            if sim < cfg.min_similarity:
                verdict = "drifted"
            elif f == "query" and positives is not None and to_pos[n] >= sim:
                verdict = "answered"
            elif sim >= cfg.max_similarity:
                verdict = "too_similar"
            else:
                verdict = "kept"
                kept.append(item)
            self.tally(verdict, table, r, cols[f][r], text)
        if not kept:
            return None
        take = pa.array([r for r, *_ in kept], pa.int64())
        new = table.take(take)
        ids = table.column("id").to_pylist()
        columns = {"id": [f"{ids[r]}:para.{f}.{k}" for r, f, k, _ in kept],
                   "lineage": derived_lineage(table.column("lineage"), [r for r, *_ in kept],
                                              [ids[r] for r, *_ in kept],
                                              [self.lineage_event(f"field={f} sample={k}") for _, f, k, _ in kept])}
        for f in fields:
            values = new.column(f).to_pylist()
            for i, (_, field, _, text) in enumerate(kept):
                if field == f:
                    values[i] = text
            columns[f] = values
        return replace_columns(new, columns)
