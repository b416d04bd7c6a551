"""`llm_negatives`: hard negatives written by an LLM: on the query's topic, but not answering it.

For a `fraction` of retrieval records the LLM writes `per_record` passages (or, with `fill_to`, as many as the
record lacks to reach that many negatives: after `mine_negatives` with `llm_share: 0.3` this completes the
report's 70% mined / 30% generated mix). Each passage passes the quality checks (length, script,
refusal/boilerplate, not a near copy of the positive or of a negative the record holds), then the bands under
the packaged MiniLM: on topic (sim(query, passage) >= `min_query_similarity`) and a false-negative guard
(sim(query, passage) < `perc` * sim(query, positive), as mining's TopK-PercPos); optionally an LLM judge
(`judge: true`) drops passages it says answer the query. Kept passages are appended with origin `llm`.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa

from datakit.llm import quality
from datakit.llm.prompts import load_prompt
from datakit.records import add_event, replace_columns
from datakit.steps.base import Stream, register
from datakit.steps.synthesis import SynthesisConfig, SynthesisStep, concat_batches, gathered, prompt_file, split_like


class LLMNegativesConfig(SynthesisConfig):
    type: Literal["llm_negatives"] = "llm_negatives"
    fraction: float = 0.3  # the report: 30% of hard negatives generated, 70% mined
    include_generated: bool = True  # paraphrased and augmented records need negatives too
    per_record: int = 1
    fill_to: int | None = None  # instead of per_record: generate until the record holds this many negatives
    min_query_similarity: float = 0.3  # below: off topic, too easy to be a hard negative
    perc: float = 0.95  # at or above perc * sim(query, positive): likely answers the query (false negative)
    judge: bool = False  # ask the LLM whether the passage answers the query; drop it if so
    judge_prompt: str = "judge_negative"

    def named_paths(self) -> list[tuple[str, str]]:
        from datakit.llm.prompts import is_packaged_id

        extra = [("judge_prompt", self.judge_prompt)] if not is_packaged_id(self.judge_prompt) else []
        return super().named_paths() + extra


@register
class LLMNegatives(SynthesisStep):
    name = "llm_negatives"
    Config = LLMNegativesConfig
    default_prompt = "llm_negative"
    config: LLMNegativesConfig

    def __init__(self, config: LLMNegativesConfig, ctx):
        super().__init__(config, ctx)
        self.judge_prompt = load_prompt(prompt_file(config.judge_prompt, ctx, "llm_negatives.judge_prompt")) \
            if config.judge else None

    def run(self, stream: Stream) -> Stream:
        for kind, tables in gathered(stream):
            if kind == "retrieval" and any(t.num_rows for t in tables):
                tables = split_like(self._negatives(concat_batches(tables)), tables)
            for table in tables:
                self.kept += table.num_rows
                yield kind, table

    def _negatives(self, table: pa.Table) -> pa.Table:
        cfg = self.config
        rows = self.select(table)
        queries = table.column("query").to_pylist()
        positives = table.column("positive").to_pylist()
        negatives = table.column("negatives").to_pylist()
        origins = table.column("negative_origins").to_pylist()
        jobs = []
        for r in rows:
            n = cfg.per_record if cfg.fill_to is None else max(0, cfg.fill_to - len(negatives[r]))
            jobs += [(r, k) for k in range(n)]
        if not jobs:
            return table
        answers = self.generate([{"query": queries[r], "positive": positives[r]} for r, _ in jobs],
                                [k for _, k in jobs])
        passed = []
        for (r, k), answer in zip(jobs, answers):
            text, reason = self.text_of(answer, "passage")
            if not reason:
                reason = quality.check(text, positives[r], cfg.quality, copy_of=[positives[r], *negatives[r]])
            if reason:
                self.tally(reason, table, r, queries[r], text)
            else:
                passed.append((r, k, text))
        q_neg = self.similarity([queries[r] for r, _, _ in passed], [t for *_, t in passed])
        q_pos = self.similarity([queries[r] for r, _, _ in passed], [positives[r] for r, _, _ in passed])
        banded = []
        for item, qn, qp in zip(passed, q_neg.tolist(), q_pos.tolist()):
            if qn < cfg.min_query_similarity:
                self.tally("off_topic", table, item[0], queries[item[0]], item[2])
            elif qn >= cfg.perc * qp:
                self.tally("false_negative", table, item[0], queries[item[0]], item[2])
            else:
                banded.append(item)
        if cfg.judge and banded:
            banded = self._judge(banded, queries, table)
        changed = np.zeros(table.num_rows, bool)
        for r, _, text in banded:
            if text in negatives[r]:  # two samples wrote the same passage
                self.tally("duplicate", table, r, queries[r], text)
                continue
            negatives[r] = negatives[r] + [text]
            origins[r] = origins[r] + ["llm"]
            changed[r] = True
            self.tally("kept", table, r, queries[r], text)
        if not changed.any():
            return table
        lineage = add_event(table.column("lineage"), self.name, model=self.model, prompt_id=self.prompt.ref,
                            detail="llm hard negatives", where=changed)
        return replace_columns(table, {"negatives": negatives, "negative_origins": origins, "lineage": lineage})

    def _judge(self, items: list[tuple[int, int, str]], queries: list[str],
               table: pa.Table) -> list[tuple[int, int, str]]:
        answers = self.generate([{"query": queries[r], "passage": t} for r, _, t in items], prompt=self.judge_prompt)
        kept = []
        for item, answer in zip(items, answers):
            if answer.data is None:
                self.tally(f"judge_{answer.error or 'failed'}", table, item[0], queries[item[0]], item[2])
            elif getattr(answer.data, "answers"):
                self.tally("judge_says_answers", table, item[0], queries[item[0]], item[2])
            else:
                kept.append(item)
        return kept
