"""Executors: where a build's work runs. An executor reads the sources (through `datakit.reading`) and chains the
steps; the records, their order and the manifest's counts do not depend on which one ran them.

`LocalExecutor` runs everything in this process; `datakit.ray_executor.RayExecutor` runs sources and batch-wise
steps as Ray tasks. Both implement `Executor`.
"""
from __future__ import annotations

import os
import threading
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, Iterator

import pyarrow as pa

from datakit.manifest_schema import OTHER_STAGE, stage_key
from datakit.reading import Quarantined, SourceEvent, Tally, check_quarantine_share, source_events
from datakit.shards import ShardWriter
from datakit.steps import Step, StepContext
from datakit.tasks import LocalTasks, TaskRunner

if TYPE_CHECKING:
    from datakit.recipe import LoadedRecipe, SourceConfig

ProgressFn = Callable[[str, int], None]
Stream = Iterator[tuple[str, pa.Table]]


def current_rss() -> int | None:
    """This process's resident memory in bytes (Linux: /proc/self/statm), or None where it cannot be read."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def current_anon() -> int | None:
    """This process's anonymous resident memory in bytes (RssAnon: its heap and arrays; not the pages of files it
    maps, such as spills, nor shared memory, such as Ray's object store), or None where it cannot be read."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _memory() -> tuple[int, int | None] | None:
    """(RSS, anonymous memory) of this process now; None where RSS cannot be read."""
    rss = current_rss()
    return None if rss is None else (rss, current_anon())


class StageClock:
    """Wall time spent producing each stage's batches (inclusive of the stages before it, which it pulls), and
    the process's peak resident memory seen while each stage ran (`watch_memory`)."""

    def __init__(self) -> None:
        self.inclusive: dict[str, float] = {}
        self.peak_rss: dict[str, int] = {}
        self.peak_anon: dict[str, int] = {}
        self._active: list[str] = []  # the stages whose next batch is being made; the last one runs
        self._switches = 0  # times the running stage changed (a sample that spans a change is not counted)
        self._watching = False

    def watch_memory(self, every_s: float = 0.05) -> Callable[[], None]:
        """Sample the process's RSS every `every_s` in a thread, each sample counted for the stage running then
        (`other`: setting up, writing shards); returns the function that stops it. In a Ray build this is the
        driver's memory."""
        stop = threading.Event()
        self._watching = True

        def sample() -> None:
            while not stop.wait(every_s):
                seen = self._switches
                active = self._active
                stage = active[-1] if active else OTHER_STAGE
                memory = _memory()
                if memory is None:
                    return
                if self._switches == seen:  # else the stage changed while memory was read: whose it is is unknown
                    self._record(stage, *memory)

        thread = threading.Thread(target=sample, name="datakit-rss", daemon=True)
        thread.start()

        def halt() -> None:
            stop.set()
            thread.join()
            self._watching = False
        return halt

    def _note(self, stage: str) -> None:
        """Count the memory now for `stage` (called by the thread that runs it)."""
        memory = _memory()
        if memory is not None:
            self._record(stage, *memory)

    def _record(self, stage: str, rss: int, anon: int | None) -> None:
        if rss > self.peak_rss.get(stage, 0):
            self.peak_rss[stage] = rss
        if anon is not None and anon > self.peak_anon.get(stage, 0):
            self.peak_anon[stage] = anon

    def peak_rss_mib(self) -> dict[str, float]:
        """Peak RSS per stage in MiB, in pipeline order, and `build` (the peak over all of them)."""
        return self._mib(self.peak_rss)

    def peak_anon_mib(self) -> dict[str, float]:
        """Peak anonymous memory per stage in MiB (what the process itself holds: RSS less mapped files and shared
        memory; on Ray the object store's pages the driver touched count in RSS, not here), and `build`."""
        return self._mib(self.peak_anon)

    def _mib(self, peaks: dict[str, int]) -> dict[str, float]:
        names = [*self.inclusive, OTHER_STAGE]
        out = {n: round(peaks[n] / 2**20, 1) for n in names if n in peaks}
        if out:
            out["build"] = max(out.values())
        return out

    def wrap(self, name: str, stream: Stream) -> Stream:
        """Time `stream` as stage `name`; stages must be wrapped in pipeline order (read first)."""
        self.inclusive[name] = 0.0
        return self._timed(name, stream)

    def _timed(self, name: str, stream: Stream) -> Stream:
        while True:
            t = time.perf_counter()
            self._active.append(name)
            self._switches += 1
            try:
                item = next(stream)
            except StopIteration:
                self.inclusive[name] += time.perf_counter() - t
                return
            finally:
                if self._watching:  # a stage quicker than the sampling interval is counted too
                    self._note(name)
                self._active.pop()
                self._switches += 1
            self.inclusive[name] += time.perf_counter() - t
            yield item

    def exclusive(self, total: float) -> dict[str, float]:
        """Seconds per stage alone (each stage pulls only from the one before it); the rest (setting the
        steps up, writing shards) is `other`."""
        out, before = {}, 0.0
        for name, t in self.inclusive.items():
            out[name] = round(max(0.0, t - before), 3)
            before = t
        out[OTHER_STAGE] = round(max(0.0, total - before), 3)
        return out


def consume_source(src: SourceConfig, events: Iterator[SourceEvent], writer: ShardWriter, tally: Tally,
                   progress: ProgressFn | None) -> Stream:
    """Write a source's quarantine, count its rows, and pass its record batches on; then fail the build if
    more of the source was quarantined than its `max_quarantine` allows."""
    for event in events:
        item = tally.take(src.name, event)
        if isinstance(item, Quarantined):
            writer.write("quarantine", item.table)
        elif item is not None:
            yield item.kind, item.table
        elif progress:
            progress(src.name, tally.rows_read[src.name])
    check_quarantine_share(src, tally)


def chain_steps(stream: Stream, steps: list[Step], clock: StageClock, first: int = 0) -> Stream:
    """The steps chained in this process (`first`: index of steps[0] in the recipe, for the timing names); each
    step's `finish` once its stream is exhausted."""
    for i, step in enumerate(steps, first):
        stream = clock.wrap(stage_key(i, step.name), finished(step, step.process(stream)))
    return stream


def finished(step: Step, stream: Stream) -> Stream:
    """`stream`, then `step.finish()` (every executor calls it once, where the step's counters are whole)."""
    yield from stream
    step.finish()


class Executor(ABC):
    """Where a build's work runs: its sources, its steps, and (`tasks`, the one seam a step sees) the heavy parts
    steps hand over."""

    name: str
    tasks: TaskRunner

    @abstractmethod
    def records(self, loaded: LoadedRecipe, writer: ShardWriter, tally: Tally, strict: bool,
                progress: ProgressFn | None, batch_rows: int) -> Stream:
        """Every source's records, in recipe order; quarantined rows go to `writer`, counts to `tally`."""

    @abstractmethod
    def run_steps(self, stream: Stream, steps: list[Step], ctx: StepContext, clock: StageClock) -> Stream:
        """The stream after every step."""

    def describe(self) -> dict[str, Any]:
        """What the manifest records of the executor."""
        return {"name": self.name}


class LocalExecutor(Executor):
    """Runs a build in this process: sources one after another, steps chained as generators."""

    name = "local"

    def __init__(self) -> None:
        self.tasks = LocalTasks()

    def records(self, loaded: LoadedRecipe, writer: ShardWriter, tally: Tally, strict: bool,
                progress: ProgressFn | None, batch_rows: int) -> Stream:
        for src in loaded.recipe.sources:
            yield from consume_source(src, source_events(src, loaded.sandbox, strict, batch_rows), writer, tally,
                                      progress)

    def run_steps(self, stream: Stream, steps: list[Step], ctx: StepContext, clock: StageClock) -> Stream:
        return chain_steps(stream, steps, clock)
