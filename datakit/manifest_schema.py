"""The manifest's shape, typed: what every build's `manifest.json` holds, checked when it is written and when it is
read (`datakit.manifest.write_manifest`, `datakit.manifest.load`), so readers use attributes instead of string keys
and a manifest missing what a reader needs is one error naming the field, not a KeyError three modules away.

Sections that belong to one step (`contamination`, `mining`, a synthesis step's entry) are typed where every
reader relies on them and left as mappings where only that step's own report reads them. Unknown top-level keys
are kept (`extra="allow"`): a newer writer's manifest still reads.

The stage names of `timings_s` and `peak_rss_mib` (`read`, `0:filter`, `1:dedup+2:filter (ray tasks)`, `other`)
are made and read here only: `stage_key`, `parallel_stage_key`, `stage_label`.

Pure pydantic and the standard library: the trainer reads manifests on a GPU box without the data stack.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

READ_STAGE, OTHER_STAGE = "read", "other"
PARALLEL_SUFFIX = " (ray tasks)"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class RecipeRef(_Open):
    name: str
    sha256: str
    path: str | None = None


class ShardEntry(_Open):
    file: str  # relative to the build folder
    kind: str
    rows: int
    bytes: int
    sha256: str


class QuarantineSummary(_Open):
    n: int = 0
    reasons: dict[str, int] = Field(default_factory=dict)
    by_dataset: dict[str, dict[str, int]] = Field(default_factory=dict)
    lost_rows: dict[str, int] = Field(default_factory=dict)  # rows swallowed by an unbalanced CSV quote


class StepEntry(_Open):
    type: str
    config: dict[str, Any] = Field(default_factory=dict)
    report: dict[str, Any] = Field(default_factory=dict)


class SynthesisEntry(_Open):
    model: str
    prompt: str
    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    kept: int = 0
    dropped: dict[str, int] = Field(default_factory=dict)
    failures: dict[str, int] | None = None


class Contamination(_Open):
    """What the `decontaminate` step found (its full report, with examples, is `contamination.json`)."""

    action: str = "drop"  # drop (removed) or flag (kept, marked)
    packs: list[str] = Field(default_factory=list)
    records_checked: int = 0
    contaminated: int = 0
    by_match: dict[str, int] = Field(default_factory=dict)  # best match (exact, minhash, ngram) -> records
    by_dataset: dict[str, int] = Field(default_factory=dict)
    by_task: dict[str, int] = Field(default_factory=dict)  # "pack/task/split" -> records
    by_task_match: dict[str, dict[str, int]] = Field(default_factory=dict)
    pack_tasks: dict[str, int | None] = Field(default_factory=dict)  # every task checked -> its test texts


class LLMBudget(_Open):
    max_budget_usd: float | None = None
    spent_usd: float = 0.0
    reached: bool = False
    requests_not_sent: int = 0


class Manifest(_Open):
    format: int = 1
    recipe: RecipeRef
    parent: dict[str, Any] | None = None  # {path, sha256, ...} of the build a `datakit dedup OUT` ran on
    versions: dict[str, str] = Field(default_factory=dict)
    created: str = ""
    duration_s: float = 0.0
    executor: dict[str, Any] = Field(default_factory=dict)
    timings_s: dict[str, float] = Field(default_factory=dict)  # seconds per stage (`stage_label`)
    peak_rss_mib: dict[str, float] = Field(default_factory=dict)
    peak_anon_mib: dict[str, float] = Field(default_factory=dict)
    rows_read: dict[str, int] = Field(default_factory=dict)  # per source
    inputs: dict[str, Any] = Field(default_factory=dict)  # per source: adapter, files read and skipped, digests
    counts: dict[str, dict[str, int]] = Field(default_factory=dict)  # kind -> dataset -> records
    quarantined: QuarantineSummary = Field(default_factory=QuarantineSummary)
    incomplete_inputs: list[Any] = Field(default_factory=list)
    dropped: dict[str, dict[str, int]] = Field(default_factory=dict)  # stage key -> reason -> records
    steps: list[StepEntry] = Field(default_factory=list)
    shards: list[ShardEntry] = Field(default_factory=list)
    negatives: dict[str, Any] = Field(default_factory=dict)
    llm_budget: LLMBudget | None = None
    synthesis: dict[str, SynthesisEntry] = Field(default_factory=dict)
    contamination: Contamination | None = None
    mining: dict[str, Any] | None = None
    warnings: list[str] = Field(default_factory=list)
    artifacts: list[str] = Field(default_factory=list)

    @property
    def records(self) -> int:
        """Records in the build (every kind, quarantine excluded)."""
        return sum(n for per in self.counts.values() for n in per.values())

    def step_dropped(self, index: int) -> dict[str, int]:
        """What step `index` (0-based, recipe order) dropped, by reason."""
        return self.dropped.get(stage_key(index, self.steps[index].type), {})

    def step_report(self, step_type: str) -> dict[str, Any] | None:
        """The report of the first step of this type, or None."""
        return next((s.report for s in self.steps if s.type == step_type), None)


def stage_key(index: int, step: str) -> str:
    """The stage name of step `index` (0-based) run in this process: `2:paraphrase`."""
    return f"{index}:{step}"


def stage_index(key: str) -> int | None:
    """The step index (0-based) of an in-process stage name (`2:paraphrase` -> 2); None for any other stage."""
    index, sep, _ = key.partition(":")
    return int(index) if sep and index.isdigit() and not key.endswith(PARALLEL_SUFFIX) else None


def parallel_stage_key(steps: list[tuple[int, str]]) -> str:
    """The stage name of a run of batch-wise steps run together as an executor's tasks."""
    return "+".join(stage_key(i, s) for i, s in steps) + PARALLEL_SUFFIX


def stage_label(key: str) -> str:
    """A stage name for people: `2:paraphrase` -> `step 3 (paraphrase)` (steps counted from 1),
    `read` -> `reading sources`, `other` -> `writing and setup`, a parallel run `... on Ray`."""
    if key == READ_STAGE:
        return "reading sources"
    if key == OTHER_STAGE:
        return "writing and setup"
    parallel = key.endswith(PARALLEL_SUFFIX)
    head = key[: -len(PARALLEL_SUFFIX)] if parallel else key
    names = []
    for part in head.split("+"):
        index, sep, name = part.partition(":")
        if not (sep and index.isdigit()):
            return key
        names.append(f"step {int(index) + 1} ({name})")
    return " + ".join(names) + (" on Ray" if parallel else "")
