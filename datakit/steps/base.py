"""What every step is: its config, its context, the Step base class and the registry by name.

A step's `run` takes a stream of `(kind, table)` record batches and yields the batches it
keeps (datatrove style), so streaming steps work batch by batch and global steps
(dedup, mining) can consume the whole stream first. Its counters go into the manifest.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from datakit.sources import Sandbox
from datakit.tasks import LocalTasks, TaskRunner

Stream = Iterator[tuple[str, pa.Table]]


DROP_WARN = 0.5  # a step that removes more than this share of a dataset's records is reported in the warnings


class StepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    max_drop: float | None = Field(None, ge=0.0, le=1.0, description="fail the build when this step removes more "
                                   "than this share of any dataset's records (a warning past 50% regardless)")

    def named_paths(self) -> list[tuple[str, str]]:
        """(key, path) for every file or folder this config names (read, or written like a cache): each goes
        through the recipe's sandbox (`datakit.recipe.check_paths`) before the build reads anything."""
        return []


ARTIFACT_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*\.json$"  # a step's report file: a plain name inside the output


class StepFailed(RuntimeError):
    """A step refused to go on (too many failed LLM calls, more of a dataset removed than its max_drop): the build
    fails and nothing is published."""


@dataclass
class StepContext:
    """What a step may need besides its config: where the recipe lives and where output goes."""

    sandbox: Sandbox  # where the recipe may read (relative paths resolve against its folder)
    out_dir: Path
    work_dir: Path  # scratch space inside the staging folder (removed after the build)
    artifacts_dir: Path  # files written here (reports) are published into OUT with the shards
    llm: Any = None  # recipe.LLMSettings: defaults of the synthesis steps
    budget: Any = None  # llm.client.Budget shared by the synthesis steps
    # where a step's heavy parts run (`datakit.tasks`): in this process, or as the executor's tasks (Ray)
    tasks: TaskRunner = field(default_factory=LocalTasks)

    @property
    def base_dir(self) -> Path:
        return self.sandbox.base_dir

    def resolve(self, path: str | Path) -> Path:
        """A path from a step's config: relative ones are relative to the recipe."""
        return self.sandbox.absolute(path)

    def readable(self, path: str | Path, what: str) -> Path:
        """A file a step reads into the corpus or sends to an LLM (a mining pool, benchmark files, a prompt
        file), or a cache it writes: resolved, and inside the recipe's sandbox (a cache also inside
        $DATAKIT_CACHE; `Sandbox.named`); a SourceError otherwise."""
        return self.sandbox.named(what, path)


class Step:
    name: ClassVar[str]
    Config: ClassVar[type[StepConfig]]
    #: True when the step works on each batch alone (no state across batches but counters), so an executor
    #: may run it on many batches at once in other processes (the Ray executor) and merge the counters
    parallel_safe: ClassVar[bool] = False
    #: True for a step that calls an LLM (the build's manifest then records the spending budget)
    uses_llm: ClassVar[bool] = False
    #: the hard negatives per retrieval record this step aims at (the manifest's `negatives` counts who fell short)
    negatives_target: int | None = None

    def __init__(self, config: StepConfig, ctx: StepContext):
        self.config = config
        self.ctx = ctx
        self.dropped: Counter[str] = Counter()
        self.kept = 0
        self.flow: dict[str, list[int]] = {}  # "kind/dataset" -> [records in, records out]

    def run(self, stream: Stream) -> Stream:
        raise NotImplementedError

    def process(self, stream: Stream) -> Stream:
        """`run`, with the records of each dataset counted going in and coming out (what executors call)."""
        return self._flow(self.run(self._flow(stream, 0)), 1)

    def _flow(self, stream: Stream, side: int) -> Stream:
        for kind, table in stream:
            if table.num_rows:
                for item in pc.value_counts(table.column("dataset")).to_pylist():
                    self.flow.setdefault(f"{kind}/{item['values']}", [0, 0])[side] += item["counts"]
            yield kind, table

    def preflight(self) -> None:
        """Called once before any record flows: a step that depends on something outside (an LLM provider)
        checks it here, so a wrong key fails in seconds, not after the whole corpus was read."""

    def check(self, label: str) -> list[str]:
        """Called once the stream is exhausted: warnings for datasets this step removed more than half of;
        StepFailed when it removed more than its `max_drop` of one."""
        warnings, over = [], []
        limit = self.config.max_drop
        for key, (n_in, n_out) in sorted(self.flow.items()):
            kind, ds = key.split("/", 1)
            share = (n_in - n_out) / n_in if n_in else 0.0
            if share > DROP_WARN:
                warnings.append(f"{label} removed {n_in - n_out:,} of {n_in:,} records of dataset {ds!r} ({kind}, "
                                f"{share:.0%})")
            if limit is not None and share > limit:
                over.append(f"dataset {ds!r} ({kind}): {n_in - n_out:,} of {n_in:,} ({share:.1%})")
        if over:
            raise StepFailed(f"{label} removed more than its max_drop {limit:.0%} of " + "; ".join(over)
                             + " (raise max_drop, or check the step: see its report)")
        return warnings

    def take_state(self) -> dict[str, Any]:
        """The counters gathered since the last call (reset), for `merge_state` in another process."""
        state = {"kept": self.kept, "dropped": dict(self.dropped), "flow": self.flow}
        self.kept, self.dropped, self.flow = 0, Counter(), {}
        return state

    def merge_state(self, state: dict[str, Any]) -> None:
        self.kept += state["kept"]
        self.dropped.update(state["dropped"])
        for key, (n_in, n_out) in state.get("flow", {}).items():
            mine = self.flow.setdefault(key, [0, 0])
            mine[0] += n_in
            mine[1] += n_out

    def finish(self) -> None:
        """Called by the executor once the stream is exhausted and the step's counters are whole (merged from
        workers where it ran elsewhere): write reports here."""

    def report(self) -> dict[str, Any]:
        """Counters for the manifest's `steps` entry (`records`: per kind/dataset, [in, out])."""
        return {"kept": self.kept, "dropped": dict(self.dropped),
                "records": {key: list(v) for key, v in sorted(self.flow.items())}}

    def manifest_entries(self) -> dict[str, Any]:
        """Top-level manifest keys this step contributes (e.g. `contamination`)."""
        return {}


STEPS: dict[str, type[Step]] = {}


def register(cls: type[Step]) -> type[Step]:
    STEPS[cls.name] = cls
    return cls
