"""`augment`: from a seed retrieval record, generate new query/passage pairs on related topics.

The LLM answers JSON `{"query", "passage"}` (schema-validated, one stricter retry). Each pair passes the
quality checks (the query against the seed query, the passage against the seed positive: length, script,
refusal/boilerplate, near copy), then two bands under the packaged MiniLM: the new passage must answer the
new query (`min_pair_similarity`), and the new query must stay near the seed's topic without repeating it
(`min_topic_similarity` <= sim(seed query, new query) < `max_topic_similarity`). A kept pair becomes a record
`{id}:aug.{k}` in the seed's dataset with the seed's instruction and no negatives (mining can add them later).
"""
from __future__ import annotations

from typing import Literal

import pyarrow as pa

from datakit.llm import quality
from datakit.records import conform
from datakit.steps.base import register
from datakit.steps.synthesis import SynthesisConfig, SynthesisStep, derived_lineage


class AugmentConfig(SynthesisConfig):
    type: Literal["augment"] = "augment"
    min_pair_similarity: float = 0.35  # sim(new query, new passage) below: the passage does not answer
    min_topic_similarity: float = 0.2  # sim(seed query, new query) below: off topic
    max_topic_similarity: float = 0.9  # at or above: the same question again, no new topic


@register
class Augment(SynthesisStep):
    name = "augment"
    Config = AugmentConfig
    default_prompt = "augment"
    config: AugmentConfig

    def new_records(self, kind: str, table: pa.Table) -> pa.Table | None:
        cfg = self.config
        rows = self.select(table) if kind == "retrieval" else []
        if not rows:
            return None
        queries = table.column("query").to_pylist()
        positives = table.column("positive").to_pylist()
        instructions = table.column("instruction").to_pylist()
        jobs = [(r, k) for r in rows for k in range(cfg.samples)]
        answers = self.generate([{"query": queries[r], "positive": positives[r], "instruction": instructions[r]}
                                 for r, _ in jobs], [k for _, k in jobs])
        passed = []
        for (r, k), answer in zip(jobs, answers):
            query, reason = self.text_of(answer, "query")
            passage = ""
            if not reason:
                passage, _ = self.text_of(answer, "passage")
                reason = (quality.check(query, queries[r], cfg.quality, copy_of=[queries[r], positives[r]])
                          or quality.check(passage, positives[r], cfg.quality, copy_of=[positives[r]]))
                if not reason and quality.copy_ratio(query, passage) >= cfg.quality.copy_ratio:
                    reason = "query_equals_passage"
            if reason:
                self.tally(reason, table, r, queries[r], _pair(query, passage))
            else:
                passed.append((r, k, query, passage))
        pair_sim = self.similarity([q for _, _, q, _ in passed], [p for *_, p in passed])
        topic_sim = self.similarity([queries[r] for r, *_ in passed], [q for _, _, q, _ in passed])
        kept = []
        for item, ps, ts in zip(passed, pair_sim.tolist(), topic_sim.tolist()):
            if ps < cfg.min_pair_similarity:
                verdict = "unanswered"
            elif ts < cfg.min_topic_similarity:
                verdict = "off_topic"
            elif ts >= cfg.max_topic_similarity:
                verdict = "same_topic"
            else:
                verdict = "kept"
                kept.append(item)
            self.tally(verdict, table, item[0], queries[item[0]], _pair(item[2], item[3]))
        if not kept:
            return None
        ids = table.column("id").to_pylist()
        datasets = table.column("dataset").to_pylist()
        new = pa.table({
            "id": [f"{ids[r]}:aug.{k}" for r, k, _, _ in kept],
            "dataset": [datasets[r] for r, *_ in kept],
            "instruction": [instructions[r] for r, *_ in kept],
            "query": [q for _, _, q, _ in kept],
            "positive": [p for *_, p in kept],
            "negatives": pa.array([[] for _ in kept], pa.list_(pa.string())),
            "negative_origins": pa.array([[] for _ in kept], pa.list_(pa.string())),
            "lineage": derived_lineage(table.column("lineage"), [r for r, *_ in kept], [ids[r] for r, *_ in kept],
                                       [self.lineage_event(f"sample={k}") for _, k, _, _ in kept]),
        })
        return conform("retrieval", new)


def _pair(query: str, passage: str) -> str:
    """A generated query/passage pair as one text (for the manifest's examples)."""
    return f"query: {query}\npassage: {passage}" if passage else query
