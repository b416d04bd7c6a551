"""`generate_queries`: queries for a user's own passages (the `documents` adapter), kept only when they find their
passage again (InPars / Promptagator's round-trip consistency), with an evaluation split that never trains.

For each selected passage (`fraction`, `max_records`, `datasets`) the LLM writes `per_passage` queries in each
of the recipe's `styles` (packaged: `question`, `keywords`, `claim`, `translated` (a question in `language`); or
a prompt file). A query passes the quality checks (length, script unless `translated`, refusals, boilerplate, a
near copy of the passage or of one of its sentences), then the round trip: every passage is embedded once (the
embedding cache mining reuses), the query is searched over them, and it is kept only if its own passage (or a
passage of the same text) ranks within the top `k`. The keep rate and the rank histogram go to the step report
and the audit page.

Kept queries become retrieval records (query -> its passage; id `{passage id}:q.{style}.{i}`, lineage parent =
the passage, event with the style's prompt and the model). With `holdout` > 0 that share of *documents* (by a
hash of the document id, so no passage of a held-out document trains) is held out: their queries are not
emitted; they go, with every passage as the corpus and their qrels, to OUT/heldout/ (`tasks.yaml` is a
`trainer eval` task file). The passages themselves pass on as `passage` records (the corpus; mining's pool).

Streaming: passages are spilled to the work folder as they arrive; generation, filtering and emission go a
chunk of `CHUNK` passages at a time, so memory holds a chunk, the passages' vectors on disk (a memmap) and a hash
per passage text.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from datakit.hashing import hash_strings
from datakit.llm import quality
from datakit.llm.quality import QualityConfig
from datakit.llm.prompts import is_packaged_id, load_prompt
from datakit.records import PASSAGE, conform
from datakit.steps.base import Stream, register
from datakit.steps.synthesis import SynthesisConfig, SynthesisStep, derived_lineage, prompt_file
from datakit.engines.vectorsearch import VectorSearch

CHUNK = 2048  # passages generated for, filtered and emitted at a time
STYLES = {"question": "query_question", "keywords": "query_keywords", "claim": "query_claim",
          "translated": "query_translated"}
_SENTENCES = re.compile(r"(?<=[.!?。！？])\s+")


class GenerateQueriesConfig(SynthesisConfig):
    type: Literal["generate_queries"] = "generate_queries"
    styles: list[str] = ["question"]  # packaged styles (question, keywords, claim, translated) or prompt files
    per_passage: int = Field(1, ge=1, description="queries per passage and style")
    language: str = "German"  # the `translated` style's language
    k: int = Field(3, ge=1, description="round trip: keep a query whose passage ranks within the top k")
    holdout: float = Field(0.0, ge=0.0, lt=1.0, description="share of documents held out for evaluation")
    heldout_name: str = Field("heldout", pattern=r"^[A-Za-z0-9_.\-]+$", description="the held-out task's name")
    temperature: float = 0.7
    max_tokens: int = 64
    quality: QualityConfig = QualityConfig(max_chars=400)

    @field_validator("styles")
    @classmethod
    def _known(cls, styles: list[str]) -> list[str]:
        for s in styles:
            if s not in STYLES and not s.endswith((".yaml", ".yml")):
                raise ValueError(f"style {s!r}: one of {', '.join(STYLES)}, or a prompt file (.yaml)")
        if not styles:
            raise ValueError("give at least one style")
        return styles

    def named_paths(self) -> list[tuple[str, str]]:
        return super().named_paths() + [(f"styles[{i}]", s) for i, s in enumerate(self.styles) if s not in STYLES]


def unit_hash(key: str) -> float:
    return int(hashlib.sha1(key.encode()).hexdigest()[:12], 16) / 16**12


def near_copy(query: str, passage: str, threshold: float) -> bool:
    """The query copies the passage, or one of its sentences, nearly word for word."""
    return any(quality.copy_ratio(query, part) >= threshold for part in [passage, *_SENTENCES.split(passage)])


@register
class GenerateQueries(SynthesisStep):
    name = "generate_queries"
    Config = GenerateQueriesConfig
    default_prompt = "query_question"
    config: GenerateQueriesConfig

    def __init__(self, config: GenerateQueriesConfig, ctx):
        super().__init__(config, ctx)
        self.prompts = {}
        for style in config.styles:
            name = STYLES.get(style, style)
            self.prompts[style] = load_prompt(prompt_file(name, ctx, f"{self.name}.styles") if not
                                              is_packaged_id(name) else name)
        self.ranks: Counter = Counter()  # rank of the own passage (1..k, or "miss") of filtered queries
        self.passages = self.documents = self.heldout_documents = 0
        self.heldout_queries = 0
        self.by_style: dict[str, Counter] = {s: Counter() for s in config.styles}

    @property
    def parallel_safe(self) -> bool:  # type: ignore[override]
        return False  # the round trip searches every passage

    def run(self, stream: Stream) -> Stream:
        spill = self.ctx.work_dir / "generate_queries"
        spill.mkdir(parents=True, exist_ok=True)
        path = spill / "passages.arrow"
        writer = None
        for kind, table in stream:
            if kind == PASSAGE and (self.config.datasets is None or
                                    set(pc.unique(table.column("dataset")).to_pylist()) & set(self.config.datasets)):
                if writer is None:
                    writer = pa.ipc.new_file(str(path), table.schema)
                writer.write_table(table)
                continue
            self.kept += table.num_rows
            yield kind, table
        if writer is None:
            return
        writer.close()
        yield from self._generate(pa.ipc.open_file(pa.memory_map(str(path))), spill)

    # ------------------------------------------------------------------ the work
    def _generate(self, spilled: pa.ipc.RecordBatchFileReader, spill: Path) -> Stream:
        cfg = self.config
        texts = (spilled.get_batch(b).column("text") for b in range(spilled.num_record_batches))
        n = sum(spilled.get_batch(b).num_rows for b in range(spilled.num_record_batches))
        self.passages = n
        hashes = np.concatenate([hash_strings(t) for t in texts]) if n else np.zeros(0, np.uint64)
        pool = self.embedder.encode_into(spill / "passages.npy", (
            spilled.get_batch(b).column("text").to_pylist() for b in range(spilled.num_record_batches)), n)
        search = VectorSearch(pool, "auto")
        heldout = _HeldOut(self.ctx.artifacts_dir / "heldout", cfg) if cfg.holdout > 0 else None
        docs, held_docs = set(), set()
        offset = 0
        try:
            for b in range(spilled.num_record_batches):
                batch = pa.Table.from_batches([spilled.get_batch(b)])
                for start in range(0, batch.num_rows, CHUNK):
                    part = batch.slice(start, CHUNK)
                    doc_ids = part.column("doc_id").to_pylist()
                    held = [unit_hash(f"{cfg.seed}:holdout:{d}") < cfg.holdout for d in doc_ids]
                    docs.update(doc_ids)
                    held_docs.update(d for d, h in zip(doc_ids, held) if h)
                    records, held_queries = self._chunk(part, offset + start, held, search, hashes)
                    if heldout is not None:
                        heldout.add_queries(held_queries)
                    if records is not None and records.num_rows:
                        self.kept += records.num_rows
                        yield "retrieval", records
                offset += batch.num_rows
                if heldout is not None:
                    heldout.add_corpus(batch)
                self.kept += batch.num_rows
                yield PASSAGE, batch
        finally:
            search.close()
        self.documents, self.heldout_documents = len(docs), len(held_docs)
        if heldout is not None:
            self.heldout_queries = heldout.close(self.ctx.artifacts_dir)

    def _chunk(self, part: pa.Table, first_row: int, held: list[bool], search: VectorSearch,
               hashes: np.ndarray) -> tuple[pa.Table | None, list[dict[str, Any]]]:
        cfg = self.config
        rows = self.select(part)
        if not rows:
            return None, []
        passages = part.column("text").to_pylist()
        titles = part.column("title").to_pylist()
        jobs = [(r, style, i) for r in rows for style in cfg.styles for i in range(cfg.per_passage)]
        answers = []
        for style in cfg.styles:  # one prompt per style: each style's requests go together
            mine = [(r, s, i) for r, s, i in jobs if s == style]
            values = [{"passage": passages[r], "title": f"{titles[r]}\n" if titles[r] else "",
                       "language": cfg.language} for r, _, _ in mine]
            answers += list(zip(mine, self.generate(values, [i for _, _, i in mine], self.prompts[style])))
        passed = []
        for (r, style, i), answer in answers:
            text, reason = self.text_of(answer)
            if not reason:
                reason = quality.check(text, "" if style == "translated" else passages[r], cfg.quality)
            if not reason and near_copy(text, passages[r], cfg.quality.copy_ratio):
                reason = "near_copy"
            self.by_style[style]["generated"] += 1
            if reason:
                self.tally(reason, part, r, passages[r], text)
                self.by_style[style][reason] += 1
            else:
                passed.append((r, style, i, text))
        if not passed:
            return None, []
        vectors = self.embedder.encode([t for *_, t in passed])
        _, found = search.search(vectors, cfg.k)
        kept, held_out = [], []
        for (r, style, i, text), ids in zip(passed, found):
            own = first_row + r
            same = np.isin(ids, np.nonzero(hashes == hashes[own])[0]) if len(ids) else np.zeros(0, bool)
            rank = int(np.argmax(same)) + 1 if same.any() else None
            self.ranks[str(rank) if rank else "miss"] += 1
            if rank is None:
                self.tally("round_trip_miss", part, r, passages[r], text)
                self.by_style[style]["round_trip_miss"] += 1
                continue
            self.by_style[style]["kept"] += 1
            if held[r]:
                held_out.append({"query": text, "passage_id": part.column("id")[r].as_py(), "style": style})
                self.tally("held_out", part, r, passages[r], text)
            else:
                kept.append((r, style, i, text))
                self.tally("kept", part, r, passages[r], text)
        if not kept:
            return None, held_out
        ids = part.column("id").to_pylist()
        new = pa.table({
            "id": [f"{ids[r]}:q.{style}.{i}" for r, style, i, _ in kept],
            "dataset": part.column("dataset").take(pa.array([r for r, *_ in kept])),
            "instruction": part.column("instruction").take(pa.array([r for r, *_ in kept])),
            "query": [t for *_, t in kept],
            "positive": [passages[r] for r, *_ in kept],
            "negatives": pa.array([[] for _ in kept], pa.list_(pa.string())),
            "negative_origins": pa.array([[] for _ in kept], pa.list_(pa.string())),
            "lineage": derived_lineage(part.column("lineage"), [r for r, *_ in kept], [ids[r] for r, *_ in kept],
                                       [{"step": self.name, "model": self.model,
                                         "prompt_id": self.prompts[style].ref, "detail": f"style={style} sample={i}"}
                                        for _, style, i, _ in kept]),
        })
        return conform("retrieval", new), held_out

    # ------------------------------------------------------------------ failures
    def _failures(self, stats) -> Counter:
        """Requests without a usable query count against `max_failed`: failed, bad output, and queries the quality
        checks dropped (a refusal, boilerplate, a copy of the passage...). A query the round trip misses was
        usable; the filter just did not keep it."""
        counts = super()._failures(stats)
        unusable = sum(n for reason, n in self.out.items() if reason not in ("kept", "held_out", "round_trip_miss",
                                                                             "failed", "budget", "invalid_json",
                                                                             "off_schema", "empty_answer"))
        if unusable:
            counts["bad_output"] += unusable
        return counts

    # ------------------------------------------------------------------ reporting
    def report(self) -> dict[str, Any]:
        filtered = sum(self.ranks.values())
        kept = filtered - self.ranks.get("miss", 0)
        return {**super().report(), "passages": self.passages, "documents": self.documents,
                "round_trip": {"k": self.config.k, "filtered": filtered, "kept": kept,
                               "keep_rate": round(kept / filtered, 4) if filtered else None,
                               "ranks": {k: self.ranks[k] for k in sorted(self.ranks, key=_rank_order)}},
                "by_style": {s: dict(c) for s, c in self.by_style.items()},
                "heldout": {"share": self.config.holdout, "documents": self.heldout_documents,
                            "queries": self.heldout_queries} if self.config.holdout else None}

    def manifest_entries(self) -> dict[str, Any]:
        entries = super().manifest_entries()
        entry = entries["synthesis"][self.name]
        report = self.report()
        entry.update(round_trip=report["round_trip"], by_style=report["by_style"], heldout=report["heldout"])
        return entries


def _rank_order(key: str) -> tuple[int, int]:
    return (1, 0) if key == "miss" else (0, int(key))


class _HeldOut:
    """OUT/heldout/: the held-out documents' queries, every passage as the corpus, their qrels, and a task file
    `trainer eval` reads as it is (paths relative to it)."""

    def __init__(self, folder: Path, cfg: GenerateQueriesConfig):
        self.folder, self.cfg = folder, cfg
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "qrels").mkdir(exist_ok=True)
        self.queries = open(folder / "queries.jsonl", "w", encoding="utf-8")
        self.corpus = open(folder / "corpus.jsonl", "w", encoding="utf-8")
        self.qrels = open(folder / "qrels" / "test.tsv", "w", encoding="utf-8")
        self.qrels.write("query-id\tcorpus-id\tscore\n")
        self.n = 0
        self.instruction = ""  # the documents source's instruction: the task's

    def add_queries(self, items: list[dict[str, Any]]) -> None:
        for item in items:
            qid = f"q{self.n}"
            self.n += 1
            self.queries.write(json.dumps({"_id": qid, "text": item["query"], "style": item["style"]},
                                          ensure_ascii=False) + "\n")
            self.qrels.write(f"{qid}\t{item['passage_id']}\t1\n")

    def add_corpus(self, batch: pa.Table) -> None:
        self.instruction = self.instruction or next((i for i in batch.column("instruction").to_pylist() if i), "")
        for pid, text, title in zip(batch.column("id").to_pylist(), batch.column("text").to_pylist(),
                                    batch.column("title").to_pylist()):
            self.corpus.write(json.dumps({"_id": pid, "title": title, "text": text}, ensure_ascii=False) + "\n")

    def close(self, artifacts: Path) -> int:
        for fh in (self.queries, self.corpus, self.qrels):
            fh.close()
        name = self.cfg.heldout_name
        (self.folder / "tasks.yaml").write_text(
            "# Held out by generate_queries: queries of documents that never trained (their passages are in the\n"
            "# corpus with every other passage). `trainer eval MODEL --tasks OUT/heldout/tasks.yaml --out RESULTS`\n"
            f"tasks:\n  - name: {name}\n    type: retrieval\n    instruction: {json.dumps(self.instruction)}\n"
            "    beir: .\n", encoding="utf-8")
        return self.n
