"""Ray executor: the same recipe, its per-source and per-batch work spread over a Ray cluster.

- Each source is read and adapted by its own Ray task (a streaming generator), all sources at once; the
  driver consumes them in recipe order, so the record stream is the one the local executor makes.
- Every step that works batch by batch (`filter`, `decontaminate`, and `paraphrase` / `augment` /
  `llm_negatives` without `max_records`) runs as Ray tasks wherever it stands in the recipe: each run of
  consecutive batch-wise steps is one Ray task per batch, up to `window` batches in flight; results come back in
  order and each step's counters are merged into the driver's copy for the manifest.
- A step that needs the whole stream (`dedup`, `mine_negatives`, or a step with `max_records`) runs on the
  driver, out of core as in a local build; its output is streamed back out, batch by batch, to the workers
  for the batch-wise steps after it.
- `dedup` runs on the driver but hands its work to Ray tasks (`RayTasks`): every batch is signed (normalised,
  shingled, MinHashed, banded) in a task while the driver only appends the results to its spill; then 64 tasks,
  one per hash partition of the band buckets (partitioned by band and bucket hash), list candidate pairs and
  shuffle them by pair through the object store to 16 verification tasks, which decide each pair by exact
  Jaccard and join their verified pairs into components; the driver joins those small forests (connected
  components over the forests equal those over all pairs). The partition and verification tasks read the
  step's spill from the build's work folder: on a multi-node cluster, put the output folder on storage every
  node shares.
- `mine_negatives` runs on the driver, but embeds its pool and queries in Ray actors that hold the model (one
  per GPU where the cluster has GPUs, else one per `embed_cpus` CPUs), a chunk of 8,192 texts per call, results
  in order; the vectors go to the driver's memmap, so its memory stays that of one window of chunks. Its search
  runs in shards of the pool held by `_Holder` actors (up to one per CPU, reserving no CPU so later steps' tasks
  still run), each query chunk searched by every shard at once and the top-k merged on the driver.
- Synthesis on workers shares one answer cache (the SQLite file, resolved on the driver: on a multi-node
  cluster put it on shared storage with `llm.cache`) and one budget (a Ray actor).

Needs `pip install 'embedkit[ray]'`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from datakit.llm.cache import default_path
from datakit.llm.client import Budget
from datakit.manifest_schema import parallel_stage_key
from datakit.executors import Executor, ProgressFn, StageClock, chain_steps, consume_source
from datakit.reading import SourceEvent, Tally, source_events
from datakit.recipe import LLMSettings, LoadedRecipe, SourceConfig
from datakit.shards import ShardWriter
from datakit.sources import Sandbox
from datakit.steps import Step, StepContext, make_step, step_config
from datakit.tasks import Embedded, Held, TaskRunner

try:
    import ray
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the Ray executor needs Ray: pip install 'embedkit[ray]'") from exc


@ray.remote
class _BudgetActor:
    """The run's one spending cap, shared by every worker's LLM clients."""

    def __init__(self, limit_usd: float | None):
        self.budget = Budget(limit_usd)

    def spend(self, usd: float) -> None:
        self.budget.spend(usd)

    def skip(self) -> None:
        self.budget.skip()

    def reached(self) -> bool:
        return self.budget.reached

    def as_dict(self) -> dict[str, Any]:
        return self.budget.as_dict()


class RayBudget:
    """`Budget`'s interface over the actor (picklable: workers get the actor handle)."""

    def __init__(self, actor: Any):
        self.actor = actor

    @property
    def reached(self) -> bool:
        return ray.get(self.actor.reached.remote())

    def spend(self, usd: float) -> None:
        if usd:
            ray.get(self.actor.spend.remote(usd))

    def skip(self) -> None:
        self.actor.skip.remote()

    def as_dict(self) -> dict[str, Any]:
        return ray.get(self.actor.as_dict.remote())


#: sources read at once: more oversubscribe the cores (readers hold no CPU) and start more worker processes
#: (benchmarks/RESULTS.md "Sources, packs and long documents in bounded memory")
READERS_AHEAD = 2


@ray.remote(num_returns="streaming")
def _source_task(src: dict[str, Any], sandbox: Sandbox, strict: bool, batch_rows: int) -> Iterator[SourceEvent]:
    yield from source_events(SourceConfig.model_validate(src), sandbox, strict, batch_rows)


#: per worker process: one build's steps (a copy per run of batch-wise steps) and their scratch folders
_WORKER_STEPS: dict[tuple[str, int], tuple[list[Step], Path]] = {}


@ray.remote
def _steps_task(build_id: tuple[str, int], configs: list[dict[str, Any]], ctx: dict[str, Any], kind: str,
                table: pa.Table) -> tuple[list[tuple[str, pa.Table]], list[dict[str, Any]]]:
    if build_id not in _WORKER_STEPS:
        for key in [k for k in _WORKER_STEPS if k[0] != build_id[0]]:  # one build at a time per worker
            shutil.rmtree(_WORKER_STEPS.pop(key)[1], ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix="datakit-ray-"))
        context = StepContext(sandbox=ctx["sandbox"], out_dir=Path(ctx["out_dir"]), work_dir=work / "work",
                              artifacts_dir=work / "artifacts", llm=LLMSettings.model_validate(ctx["llm"]),
                              budget=ctx["budget"])
        _WORKER_STEPS[build_id] = ([make_step(step_config(c), context) for c in configs], work)
    steps = _WORKER_STEPS[build_id][0]
    stream: Iterator[tuple[str, pa.Table]] = iter([(kind, table)])
    for step in steps:
        stream = step.process(stream)
    out = list(stream)
    return out, [step.take_state() for step in steps]


@ray.remote
class _EmbedActor:
    """A sentence-transformers model on a worker, behind the shared embedding cache."""

    def __init__(self, model: str, cache_dir: str | None, batch_size: int):
        from datakit.engines.embed import Embedder

        self.embedder = Embedder(model, cache_dir=Path(cache_dir) if cache_dir else None,
                                 use_cache=cache_dir is not None, batch_size=batch_size)

    def encode(self, texts: list[str], prefix: str) -> tuple[Any, int, int]:
        before = self.embedder.encoded, self.embedder.cache_hits
        vectors = self.embedder.encode(texts, prefix)
        return vectors, self.embedder.encoded - before[0], self.embedder.cache_hits - before[1]


@ray.remote
def _call_task(fn: Any, common: Any, item: Any) -> Any:
    return fn(common, item)


@ray.remote
def _map_task(fn: Any, common: Any, item: Any, groups: int) -> Any:
    parts = list(fn(common, item))
    if len(parts) != groups:
        raise ValueError(f"{fn.__name__} returned {len(parts)} parts for {groups} groups")
    return tuple(parts) if groups > 1 else parts[0]


@ray.remote
def _reduce_task(fn: Any, common: Any, group: int, *parts: Any) -> Any:
    return fn(common, group, list(parts))


@ray.remote(num_cpus=0)  # holds memory, not a core: tasks of later steps still get every CPU (no deadlock)
class _Holder:
    """Some of a `hold` call's objects, on one worker."""

    def __init__(self, factory: Any, specs: list[Any]):
        self.objects = [factory(spec) for spec in specs]

    def call(self, method: str, *args: Any) -> list[Any]:
        return [getattr(o, method)(*args) for o in self.objects]


class _HeldOnRay(Held):
    """Objects spread over up to one `_Holder` actor per CPU (object i on actor i % actors), called at once."""

    where = "ray actors"

    def __init__(self, factory: Any, specs: list[Any]):
        count = max(1, min(len(specs), int(ray.cluster_resources().get("CPU", 1))))
        self.count, self.n = count, len(specs)
        self.actors = [_Holder.options(scheduling_strategy="SPREAD").remote(factory, specs[a::count])
                       for a in range(count)]

    def call(self, method, *args):
        shared = [ray.put(a) for a in args]
        got = _get([actor.call.remote(method, *shared) for actor in self.actors])
        return [got[i % self.count][i // self.count] for i in range(self.n)]

    def close(self):
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


class RayTasks(TaskRunner):
    """`TaskRunner` on Ray: each item a Ray task (a window of them in flight); a map-reduce shuffles its parts
    through the object store (map tasks with one return per group, each reduce task given its group's refs), so
    the parts never pass through the driver."""

    where = "ray tasks"
    embeds_in = "ray actors"

    def __init__(self, window: int, embed_cpus: int = 1):
        self.window, self.embed_cpus = window, embed_cpus

    def budget(self, limit_usd: float | None) -> RayBudget:
        return RayBudget(_BudgetActor.remote(limit_usd))

    def map(self, fn, common, items):
        shared = ray.put(common)
        pending: deque = deque()
        for item in items:
            pending.append((item, _call_task.remote(fn, shared, item)))
            if len(pending) >= self.window:
                done, ref = pending.popleft()
                yield done, _get(ref)
        while pending:
            done, ref = pending.popleft()
            yield done, _get(ref)

    def map_reduce(self, map_fn, common, items, groups, reduce_fn):
        shared = ray.put(common)
        outs = [_map_task.options(num_returns=groups).remote(map_fn, shared, item, groups) for item in items]
        if groups == 1:
            outs = [[ref] for ref in outs]
        reductions = [_reduce_task.remote(reduce_fn, shared, g, *[out[g] for out in outs]) for g in range(groups)]
        del outs  # the parts live as long as a reduce task needs them
        for ref in reductions:
            yield _get(ref)

    def hold(self, factory, specs):
        return _HeldOnRay(factory, list(specs))

    def embed(self, embedder: Any, chunks: Iterator[list[str]], prefix: str) -> Iterator[Embedded]:
        """Embed chunks of texts in Ray actors holding `embedder`'s model (a GPU each where the cluster has
        GPUs, else `embed_cpus` CPUs each), two calls in flight per actor, results in chunk order."""
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        count = gpus or max(1, int(resources.get("CPU", 1)) // self.embed_cpus)
        options = {"num_gpus": 1} if gpus else {"num_cpus": self.embed_cpus}
        cache = str(embedder.cache.folder.parent) if embedder.cache is not None else None
        model = str(Path(embedder.model_name).resolve()) if Path(embedder.model_name).exists() else embedder.model_name
        actors = [_EmbedActor.options(**options).remote(model, cache, embedder.batch_size)
                  for _ in range(count)]
        pending: deque = deque()
        try:
            for n, texts in enumerate(chunks):
                pending.append(actors[n % count].encode.remote(texts, prefix))
                if len(pending) >= 2 * count:
                    yield _get(pending.popleft())
            while pending:
                yield _get(pending.popleft())
        finally:
            for actor in actors:
                ray.kill(actor)


def _get(ref: Any) -> Any:
    """`ray.get`, with a worker's exception raised as itself (a DataError names file, row and field)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, Exception):
            raise exc.cause from None
        raise


def _events(generator: Any) -> Iterator[SourceEvent]:
    for ref in generator:
        yield _get(ref)


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, window: int | None = None,
                 embed_cpus: int = 1):
        if not ray.is_initialized():
            env = {k: os.environ[k] for k in ("DATAKIT_CACHE",) if k in os.environ}
            ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": env} if env else None)
        self.window = window or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        self.embed_cpus = embed_cpus
        self.tasks = RayTasks(self.window, embed_cpus)

    def describe(self) -> dict[str, Any]:
        resources = ray.cluster_resources()
        return {"name": self.name, "cpus": int(resources.get("CPU", 0)), "nodes": len(ray.nodes()),
                "window": self.window}

    def records(self, loaded: LoadedRecipe, writer: ShardWriter, tally: Tally, strict: bool,
                progress: ProgressFn | None, batch_rows: int) -> Iterator[tuple[str, pa.Table]]:
        """The sources read in Ray tasks, in recipe order: the one the driver takes and the next
        (`READERS_AHEAD`). A source task holds no CPU (`num_cpus=0`) and pauses once `window` of its batches wait
        for the driver (generator backpressure): no big file runs ahead into the object store, and paused readers
        never starve the step tasks the driver waits on of CPUs (docs/NOTES.md "Driver memory on Ray")."""
        sources = loaded.recipe.sources
        ahead = READERS_AHEAD
        reader = _source_task.options(num_cpus=0, _generator_backpressure_num_objects=self.window)
        started: deque = deque()
        for n, src in enumerate(sources):
            while len(started) < ahead and n + len(started) < len(sources):
                nxt = sources[n + len(started)]
                started.append(reader.remote(nxt.model_dump(mode="json"), loaded.sandbox, strict, batch_rows))
            yield from consume_source(src, _events(started.popleft()), writer, tally, progress)

    def run_steps(self, stream: Iterator[tuple[str, pa.Table]], steps: list[Step], ctx: StepContext,
                  clock: StageClock) -> Iterator[tuple[str, pa.Table]]:
        """Each run of consecutive batch-wise steps as Ray tasks; a step that needs the whole stream in this
        process, its output streamed on to the next run's tasks."""
        run_id, i = uuid.uuid4().hex, 0
        while i < len(steps):
            if not steps[i].parallel_safe:
                stream = chain_steps(stream, steps[i: i + 1], clock, i)
                i += 1
                continue
            end = i
            while end < len(steps) and steps[end].parallel_safe:
                end += 1
            name = parallel_stage_key([(k, s.name) for k, s in enumerate(steps[i:end], i)])
            stream = clock.wrap(name, self._parallel(stream, steps[i:end], ctx, (run_id, i)))
            i = end
        return stream

    def _parallel(self, stream: Iterator[tuple[str, pa.Table]], steps: list[Step], ctx: StepContext,
                  build_id: tuple[str, int]) -> Iterator[tuple[str, pa.Table]]:
        llm = ctx.llm.model_copy() if ctx.llm is not None else LLMSettings()
        llm.cache = str(ctx.resolve(llm.cache) if llm.cache else default_path())  # the one cache, for every worker
        spec = ray.put({"sandbox": ctx.sandbox, "out_dir": str(ctx.out_dir), "llm": llm.model_dump(mode="json"),
                        "budget": ctx.budget})
        raw = ray.put([step.config.model_dump(mode="json") for step in steps])  # rebuilt as configs on workers
        pending: deque = deque()  # workers build their copies of these steps once per build (`build_id`)

        def collect() -> Iterator[tuple[str, pa.Table]]:
            out, states = _get(pending.popleft())
            for step, state in zip(steps, states):
                step.merge_state(state)
            yield from out

        for kind, table in stream:
            pending.append(_steps_task.remote(build_id, raw, spec, kind, table))
            if len(pending) >= self.window:
                yield from collect()
        while pending:
            yield from collect()
        for step in steps:
            step.finish()
