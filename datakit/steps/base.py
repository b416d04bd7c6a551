"""What every step is: its config, its context, the Step base class and the registry by name.

A step's `run` takes a stream of `(kind, table)` record batches and yields the batches it
keeps (datatrove style), so streaming steps work batch by batch and global steps
(dedup, mining) can consume the whole stream first. Its counters go into the manifest.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from datakit.sources import Sandbox

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
    worker: bool = False  # a copy of the step on a worker (Ray): the driver's copy writes the reports
    # embeds chunks of texts elsewhere (Ray actors holding the model): (embedder, chunks, prefix) -> an iterator of
    # (vectors, texts encoded, cache hits) per chunk, in order; None: the step's own embedder, in this process
    embed_chunks: Any = None
    # runs a global step's heavy parts as tasks elsewhere (`TaskRunner`'s interface; the Ray executor's runs them
    # in Ray tasks); None: `LocalTasks`, in this process
    tasks: Any = None

    @property
    def runner(self) -> "TaskRunner":
        return self.tasks if self.tasks is not None else LocalTasks()

    @property
    def base_dir(self) -> Path:
        return self.sandbox.base_dir

    def resolve(self, path: str | Path) -> Path:
        """A path from a step's config: relative ones are relative to the recipe."""
        return self.sandbox.absolute(path)

    def readable(self, path: str | Path, what: str) -> Path:
        """A file a step reads into the corpus or sends to an LLM (a mining pool, benchmark files, a prompt
        file), or a cache it writes: resolved, and inside the recipe's sandbox (a cache also inside
        $DATAKIT_CACHE; `datakit.recipe.check_named`); a SourceError otherwise."""
        from datakit.recipe import check_named

        return check_named(self.sandbox, what, str(path))


class TaskRunner:
    """How a global step hands work to an executor: pure functions of (`common`, item), module-level so a worker
    can import them; `common` is sent once per call. Results come back in the items' order, so a step's output does
    not depend on where its tasks ran."""

    where = "this process"

    def map(self, fn: Callable[[Any, Any], Any], common: Any, items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        """(item, fn(common, item)) for each item, in order, lazily (a window of items in flight)."""
        raise NotImplementedError

    def map_reduce(self, map_fn: Callable[[Any, Any], Sequence[Any]], common: Any, items: Sequence[Any],
                   groups: int, reduce_fn: Callable[[Any, int, list[Any]], Any]) -> Iterator[Any]:
        """A shuffle: `map_fn(common, item)` returns one part per group; `reduce_fn(common, g, parts)` gets group
        g's part from every item (in item order). Yields the reductions in group order."""
        raise NotImplementedError

    def hold(self, factory: Callable[[Any], Any], specs: Sequence[Any]) -> "Held":
        """Objects `factory(spec)` kept alive for many calls (a search index's shards), spread where the runner
        runs work; `Held.call(method, *args)` calls each and returns their results in `specs` order."""
        raise NotImplementedError


class Held:
    """Objects held by a runner (`TaskRunner.hold`)."""

    where = "this process"

    def call(self, method: str, *args: Any) -> list[Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Let them go."""


class _HeldHere(Held):
    def __init__(self, objects: list[Any]):
        self.objects = objects

    def call(self, method, *args):
        return [getattr(o, method)(*args) for o in self.objects]

    def close(self):
        self.objects = []


class LocalTasks(TaskRunner):
    """The tasks run here, one after another."""

    def map(self, fn, common, items):
        return ((item, fn(common, item)) for item in items)

    def map_reduce(self, map_fn, common, items, groups, reduce_fn):
        parts: list[list[Any]] = [[] for _ in range(groups)]
        for item in items:
            for g, part in enumerate(map_fn(common, item)):
                parts[g].append(part)
        for g in range(groups):
            yield reduce_fn(common, g, parts[g])
            parts[g] = []

    def hold(self, factory, specs):
        return _HeldHere([factory(spec) for spec in specs])


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
        """Called once the stream is exhausted when the step ran elsewhere (writes reports from merged state)."""

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
