"""Recipe steps: small objects with one job, registered by name.

A step's `run` takes a stream of `(kind, table)` record batches and yields the batches it
keeps (datatrove style), so streaming steps work batch by batch and global steps
(dedup, mining) can consume the whole stream first. Its counters go into the manifest.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

Stream = Iterator[tuple[str, pa.Table]]


class StepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str


@dataclass
class StepContext:
    """What a step may need besides its config: where the recipe lives and where output goes."""

    base_dir: Path
    out_dir: Path
    work_dir: Path  # scratch space inside the staging folder (removed after the build)
    artifacts_dir: Path  # files written here (reports) are published into OUT with the shards
    llm: Any = None  # recipe.LLMSettings: defaults of the synthesis steps
    budget: Any = None  # llm.client.Budget shared by the synthesis steps
    worker: bool = False  # a copy of the step on a worker (Ray): the driver's copy writes the reports

    def resolve(self, path: str | Path) -> Path:
        """A path from a step's config: relative ones are relative to the recipe."""
        path = Path(path)
        return path if path.is_absolute() else self.base_dir / path


class Step:
    name: ClassVar[str]
    Config: ClassVar[type[StepConfig]]
    #: True when the step works on each batch alone (no state across batches but counters), so an executor
    #: may run it on many batches at once in other processes (the Ray executor) and merge the counters
    parallel_safe: ClassVar[bool] = False

    def __init__(self, config: StepConfig, ctx: StepContext):
        self.config = config
        self.ctx = ctx
        self.dropped: Counter[str] = Counter()
        self.kept = 0

    def run(self, stream: Stream) -> Stream:
        raise NotImplementedError

    def take_state(self) -> dict[str, Any]:
        """The counters gathered since the last call (reset), for `merge_state` in another process."""
        state = {"kept": self.kept, "dropped": dict(self.dropped)}
        self.kept, self.dropped = 0, Counter()
        return state

    def merge_state(self, state: dict[str, Any]) -> None:
        self.kept += state["kept"]
        self.dropped.update(state["dropped"])

    def finish(self) -> None:
        """Called once the stream is exhausted when the step ran elsewhere (writes reports from merged state)."""

    def report(self) -> dict[str, Any]:
        """Counters for the manifest's `steps` entry."""
        return {"kept": self.kept, "dropped": dict(self.dropped)}

    def manifest_entries(self) -> dict[str, Any]:
        """Top-level manifest keys this step contributes (e.g. `contamination`)."""
        return {}


STEPS: dict[str, type[Step]] = {}


def register(cls: type[Step]) -> type[Step]:
    STEPS[cls.name] = cls
    return cls


def step_config(raw: dict[str, Any]) -> StepConfig:
    """Validate one recipe step; KeyError for an unknown type, ValidationError for bad keys."""
    kind = raw.get("type")
    if kind not in STEPS:
        raise KeyError(f"unknown step type {kind!r}; known: {', '.join(sorted(STEPS))}")
    return STEPS[kind].Config.model_validate(raw)


def make_step(raw: dict[str, Any], ctx: StepContext) -> Step:
    config = step_config(raw)
    return STEPS[config.type](config, ctx)


# registers the built-in steps
from datakit.steps import (  # noqa: E402,F401
    augment as _augment, decontaminate as _decontaminate, dedup as _dedup, filter as _filter,
    llm_negatives as _llm_negatives, mine as _mine, paraphrase as _paraphrase)
