"""What the LLM generator steps (`paraphrase`, `augment`, `llm_negatives`) share.

Record selection (a deterministic `fraction` of ids, `datasets`, `max_records`), the LLM client built from the
step's config over the recipe's `llm:` defaults (one answer cache, one budget for the run), prompt rendering
with `sample` indices, answer parsing, embedding similarities for the quality bands, and the manifest's
`synthesis.{step}` entry: provider calls, cache hits, failures, tokens, cost, kept and dropped by reason.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from datakit.engines.embed import DEFAULT_MODEL, Embedder
from datakit.llm.cache import SECRET_PARAMS, LLMCache, default_path
from datakit.llm.client import Answer, Budget, LLMClient, LLMFailure, LLMStats
from datakit.llm.prompts import load_prompt
from datakit.llm.quality import QualityConfig, clean
from datakit.llm.endpoint import describe as describe_endpoint, normalize, request_params
from datakit.llm.settings import LLMSettings
from datakit.records import LINEAGE
from datakit.steps.base import Step, StepConfig, StepContext, StepFailed, Stream

CHUNK = 256  # requests per complete_many call: bounds memory and lets a kill lose at most one chunk's progress
EXAMPLES_PER_VERDICT = 3  # outputs kept, and dropped per reason, shown in the manifest (and the audit report)
SHOWN_CHARS = 400
MIN_FAILED = 3  # fewer failed requests than this never fail a step on their share alone (a small model's odd answer)


class SynthesisConfig(StepConfig):
    model: str | None = None  # litellm model string; default: the recipe's `llm.model`
    api_base: str | None = None  # default: the recipe's `llm.api_base`
    concurrency: int | None = Field(None, gt=0)
    temperature: float = 0.7
    max_tokens: int = 256
    params: dict[str, Any] = {}  # more litellm params (top_p, extra_body, ...); never keys: they come from the env
    prompt: str | None = None  # a packaged prompt id (`paraphrase.v1`) or a YAML file; default: the step's own
    structured: bool | None = None  # ask for schema-constrained JSON (default: only for embedded/ models)
    fraction: float = Field(1.0, ge=0, le=1)  # share of records (chosen by a hash of the id and the seed)
    max_records: int | None = Field(None, ge=0)
    datasets: list[str] | None = None  # default: all
    samples: int = Field(1, ge=1)  # generations per record (with temperature > 0, each its own cache entry)
    include_generated: bool = False  # also records an earlier synthesis step made (lineage parent_id set)
    quality: QualityConfig = QualityConfig()
    encoder: str = DEFAULT_MODEL  # sentence-transformers model for the similarity bands
    seed: int = 0
    max_failed: float = Field(0.1, ge=0, le=1, description="share of requests that may fail after retries or "
                              "give unusable output (bad JSON) before the build fails")

    def named_paths(self) -> list[tuple[str, str]]:
        from datakit.llm.prompts import is_packaged_id

        return [("prompt", self.prompt)] if self.prompt and not is_packaged_id(self.prompt) else []

    @field_validator("params")
    @classmethod
    def _no_secrets(cls, params: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(SECRET_PARAMS & set(params))
        if bad:
            raise ValueError(f"{', '.join(bad)} must not be in params: API keys come from the environment "
                             "(e.g. OPENAI_API_KEY), and the server from the step's or the llm section's api_base")
        return params


def gathered(stream: Stream, rows: int = CHUNK) -> Iterator[tuple[str, list[pa.Table]]]:
    """Consecutive batches of one kind grouped until they hold `rows` rows, so that the small batches of many
    small datasets are sent to the LLM together (its concurrency, the embedded model's batching) rather than one
    after the other. A large batch travels alone: memory stays bounded by one batch plus `rows` rows."""
    kind, group, held = None, [], 0
    for k, table in stream:
        if group and (k != kind or held + table.num_rows > rows):
            yield kind, group
            group, held = [], 0
        kind = k
        group.append(table)
        held += table.num_rows
    if group:
        yield kind, group


def concat_batches(tables: list[pa.Table]) -> pa.Table:
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")


def split_like(table: pa.Table, tables: list[pa.Table]) -> list[pa.Table]:
    """`table` (the result of processing `concat_batches(tables)` row for row) cut back into batches like `tables`."""
    out, start = [], 0
    for t in tables:
        out.append(table.slice(start, t.num_rows))
        start += t.num_rows
    return out


def by_batch(new: pa.Table, tables: list[pa.Table]) -> list[pa.Table]:
    """New records split by the batch their parent (lineage `parent_id`) came in, in their order."""
    owner: dict[str, int] = {}
    for i, t in enumerate(tables):
        for rid in t.column("id").to_pylist():
            owner.setdefault(rid, i)
    parents = pc.struct_field(new.column("lineage"), "parent_id").to_pylist()
    batch = np.array([owner.get(p, len(tables) - 1) for p in parents])
    return [new.filter(pa.array(batch == i)) for i in range(len(tables))]


def prompt_file(name: str, ctx: StepContext, what: str) -> str | Path:
    """A packaged prompt id as it is; anything else is a prompt file, resolved and checked inside the recipe's
    sandbox before it is opened (a prompt's text is sent to the LLM provider, and a shared recipe must not read,
    send or probe a file from elsewhere). A prompt file must be YAML."""
    from datakit.llm.prompts import PromptError, is_packaged_id

    if is_packaged_id(str(name)):
        return str(name)
    path = ctx.readable(name, what)  # SourceError naming the key when outside the sandbox: nothing is read
    if path.suffix not in (".yaml", ".yml"):
        raise PromptError(f"{what}: {name!r}: a prompt file must be a .yaml file (or give a packaged prompt id)")
    return path


class SynthesisStep(Step):
    default_prompt: ClassVar[str]
    uses_llm = True
    config: SynthesisConfig

    def __init__(self, config: SynthesisConfig, ctx: StepContext):
        super().__init__(config, ctx)
        self.settings: LLMSettings = ctx.llm or LLMSettings()
        self.budget: Budget = ctx.budget if ctx.budget is not None else Budget(self.settings.max_budget_usd)
        self.prompt = load_prompt(prompt_file(config.prompt or self.default_prompt, ctx, f"{self.name}.prompt"))
        self.model = config.model or self.settings.model
        self.out: Counter[str] = Counter()  # generated texts: "kept" and drop reasons
        self.selected = 0
        self.examples: list[dict[str, Any]] = []  # a few outputs per verdict, next to their source
        self.merged = LLMStats()  # counters of clients in other processes (Ray workers)
        self.requested = 0  # requests made by this copy of the step (answers, failures and budget skips)
        self.merged_requested = 0  # and by its copies in other processes
        self._client: LLMClient | None = None
        self._embedder: Embedder | None = None

    def run(self, stream: Stream) -> Stream:
        """For steps that add records (paraphrase, augment): each batch, then the records made from it, as one
        batch at a time would give them (the Ray executor does), though the LLM sees a group of batches at once
        (`gathered`). The new records are generated before the batches are passed on, so LLM calls happen in
        recipe order."""
        for kind, tables in gathered(stream):
            merged = concat_batches(tables)
            new = self.new_records(kind, merged) if merged.num_rows else None
            parts = by_batch(new, tables) if new is not None and new.num_rows else [None] * len(tables)
            for table, part in zip(tables, parts):  # each batch, then its new records: the order of one at a time
                self.kept += table.num_rows
                yield kind, table
                if part is not None and part.num_rows:
                    self.kept += part.num_rows
                    yield kind, part

    def new_records(self, kind: str, table: pa.Table) -> pa.Table | None:
        raise NotImplementedError

    # ------------------------------------------------------------------ parts
    @property
    def api_base(self) -> str | None:
        return self.config.api_base or self.settings.api_base

    def endpoint(self) -> str:
        """Where this step's requests go, and whether the user's credentials go with them (printed by the build)."""
        return describe_endpoint(self.model, self.api_base)

    @property
    def client(self) -> LLMClient:
        if self._client is None:
            s, cfg = self.settings, self.config
            params: dict[str, Any] = {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens, **cfg.params,
                                      **request_params(self.api_base)}
            structured = self.model.startswith("embedded/") if cfg.structured is None else cfg.structured
            cache = LLMCache(self.ctx.readable(s.cache, "llm.cache") if s.cache else default_path())
            concurrency = cfg.concurrency or s.concurrency or (32 if self.model.startswith("embedded/") else 4)
            self._client = LLMClient(self.model, cache, concurrency=concurrency, rpm=s.rpm,
                                     max_retries=s.max_retries, timeout=s.timeout_s, budget=self.budget,
                                     price_per_million=s.price_per_million, structured=structured, **params)
        return self._client

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder(self.config.encoder)
        return self._embedder

    def similarity(self, a: list[str], b: list[str]) -> np.ndarray:
        """Cosine similarity of a[i] and b[i] (normalised embeddings, cached on disk)."""
        if not a:
            return np.zeros(0, np.float32)
        va, vb = self.embedder.encode(a), self.embedder.encode(b)
        return np.einsum("ij,ij->i", va, vb)

    def select(self, table: pa.Table) -> list[int]:
        """Rows of this batch that get synthesis: in `datasets`, under `fraction`, within `max_records`."""
        cfg = self.config
        ids = table.column("id").to_pylist()
        datasets = table.column("dataset").to_pylist()
        generated = [bool(p) for p in pc.struct_field(table.column("lineage"), "parent_id").to_pylist()]
        rows = []
        for i, (rid, ds) in enumerate(zip(ids, datasets)):
            if cfg.max_records is not None and self.selected >= cfg.max_records:
                break
            if (cfg.datasets is not None and ds not in cfg.datasets) or (generated[i] and not cfg.include_generated):
                continue
            if cfg.fraction < 1 and _unit(f"{cfg.seed}:{self.name}:{rid}") >= cfg.fraction:
                continue
            rows.append(i)
            self.selected += 1
        return rows

    def generate(self, values: list[dict[str, Any]], samples: list[int] | None = None,
                 prompt: Any = None) -> list[Answer]:
        """One answer per `values[i]` (its sample index `samples[i]`, default 0), in order."""
        prompt = prompt or self.prompt
        schema = prompt.schema()
        samples = samples or [0] * len(values)
        requests = [{"messages": prompt.render(v), "prompt_version": prompt.cache_version, "sample": k,
                     "schema": schema} for v, k in zip(values, samples)]
        answers: list[Answer] = []
        for start in range(0, len(requests), CHUNK):
            answers += self.client.complete_many(requests[start:start + CHUNK])
            self.requested += len(requests[start:start + CHUNK])
            self._check_failures(final=False)
        return answers

    # ------------------------------------------------------------------ loud failures
    def preflight(self) -> None:
        if self.settings.preflight:  # called once, by the build in the driver, before any record is read
            try:
                self.client.preflight()
            except LLMFailure as exc:
                raise StepFailed(f"{self.name}: {exc}") from None

    def _failures(self, stats: LLMStats) -> Counter:
        """Requests without a usable answer, by class: failed after retries, or bad output (JSON that does not
        parse or fit the schema, after the stricter retry)."""
        counts = Counter(stats.failures)
        bad = sum(n for reason, n in stats.dropped.items() if reason in ("invalid_json", "off_schema", "empty_answer"))
        if bad:
            counts["bad_output"] += bad
        return counts

    def _check_failures(self, final: bool, stats: LLMStats | None = None, requested: int | None = None) -> None:
        """StepFailed when more than `max_failed` of the requests (and at least MIN_FAILED) have no usable answer,
        or every one of them: at the end of the step, or as soon as 10 have failed past that share (no point paying
        for the rest)."""
        stats = stats or (self._client.stats if self._client is not None else LLMStats())
        requested = self.requested if requested is None else requested
        counts = self._failures(stats)
        failed = sum(counts.values())
        everything = final and failed == requested and self.config.max_failed < 1
        if not everything and (failed / max(requested, 1) <= self.config.max_failed or failed < MIN_FAILED
                               or (not final and failed < 10)):
            return
        examples = dict(stats.failure_examples)
        if "bad_output" in counts:
            empty = stats.dropped.get("empty_answer", 0)
            examples["bad_output"] = (f"{empty} empty answer(s); " if empty else "") + \
                "answers that are not the prompt's JSON or are empty (see the manifest's examples)"
        error = LLMFailure(self.model, self.api_base, dict(counts), examples,
                           f"{failed:,} of {requested:,} requests", step=self.name)
        raise StepFailed(f"{error}; more than max_failed {self.config.max_failed:.0%} (answers already received "
                         "are cached: fix the cause and rebuild)")

    def check(self, label: str) -> list[str]:
        total = LLMStats()
        total.add(self.merged.as_dict())
        if self._client is not None:
            total.add(self._client.stats.as_dict())
        self._check_failures(final=True, stats=total, requested=self.requested + self.merged_requested)
        return super().check(label)

    def text_of(self, answer: Answer, field: str | None = None) -> tuple[str, str]:
        """(cleaned text, "") or ("", reason) for an answer; `field` picks a JSON answer's field."""
        if answer.text is None:
            return "", answer.error or "failed"  # failed after retries, or not sent (budget)
        if answer.error:
            return "", answer.error  # invalid_json / off_schema after the stricter retry
        raw = getattr(answer.data, field) if field else answer.text
        return clean(raw if isinstance(raw, str) else str(raw)), ""

    def tally(self, verdict: str, table: pa.Table, row: int, source: str, output: str) -> None:
        """Count a generated text as "kept" or under its drop reason; keep the first few of each as examples
        (the source record's id, file and row, its text and the output)."""
        self.out[verdict] += 1
        if self._room_for(verdict):
            lineage = table.column("lineage")[row].as_py() or {}
            self.examples.append({"verdict": verdict, "id": table.column("id")[row].as_py(),
                                  "dataset": table.column("dataset")[row].as_py(), "file": lineage.get("file"),
                                  "row": lineage.get("row"), "source": (source or "")[:SHOWN_CHARS],
                                  "output": (output or "")[:SHOWN_CHARS]})

    def _room_for(self, verdict: str) -> bool:
        return sum(e["verdict"] == verdict for e in self.examples) < EXAMPLES_PER_VERDICT

    def lineage_event(self, detail: str) -> dict[str, str]:
        return {"step": self.name, "model": self.model, "prompt_id": self.prompt.ref, "detail": detail}

    # ------------------------------------------------------------------ state across processes
    @property
    def parallel_safe(self) -> bool:  # type: ignore[override]
        return self.config.max_records is None  # max_records counts records in stream order

    def take_state(self) -> dict[str, Any]:
        state = super().take_state()
        state.update(out=dict(self.out), selected=self.selected, examples=self.examples, requested=self.requested,
                     llm=self._client.stats.as_dict() if self._client is not None else {})
        self.out, self.selected, self.examples, self.requested = Counter(), 0, [], 0
        if self._client is not None:
            self._client.stats = LLMStats()
        return state

    def merge_state(self, state: dict[str, Any]) -> None:
        super().merge_state(state)
        self.out.update(state["out"])
        self.selected += state["selected"]
        for example in state.get("examples", []):
            if self._room_for(example["verdict"]):
                self.examples.append(example)
        self.merged.add(state["llm"])
        self.merged_requested += state.get("requested", 0)

    # ------------------------------------------------------------------ reporting
    def report(self) -> dict[str, Any]:
        return {**super().report(), "selected": self.selected, "generated_kept": self.out["kept"]}

    def manifest_entries(self) -> dict[str, Any]:
        total = LLMStats()
        total.add(self.merged.as_dict())
        if self._client is not None:
            total.add(self._client.stats.as_dict())
        stats = total.as_dict()
        stats.pop("dropped", None)  # the step counts answer drops itself, with the quality reasons
        entry = {"model": self.model, "endpoint": normalize(self.api_base) if self.api_base else "provider default",
                 "credentials": "withheld" if request_params(self.api_base).get("api_key") else "environment",
                 "prompt": self.prompt.ref, "records_selected": self.selected, **stats,
                 "requests": self.requested + self.merged_requested, "failures": dict(self._failures(total)),
                 "kept": self.out["kept"], "dropped": {k: v for k, v in sorted(self.out.items()) if k != "kept"},
                 "examples": self.examples}
        return {"synthesis": {self.name: entry}}


def _unit(key: str) -> float:
    return int(hashlib.sha1(key.encode()).hexdigest()[:12], 16) / 16**12


def derived_lineage(parents: pa.Array | pa.ChunkedArray, rows: list[int], parent_ids: list[str],
                    events: list[dict[str, str]]) -> pa.Array:
    """Lineage of new records made from `rows` of a batch: the parent's source, parent_id set, one event added."""
    out = []
    parent_values = parents.take(pa.array(rows, pa.int64())).to_pylist() if rows else []
    for lin, pid, event in zip(parent_values, parent_ids, events):
        lin = dict(lin or {"source": "", "file": "", "row": -1, "parent_id": "", "events": []})
        out.append({**lin, "parent_id": pid, "events": list(lin.get("events") or []) + [event]})
    return pa.array(out, LINEAGE)
