"""The one seam between a step and where its heavy work runs.

A step hands work to `ctx.tasks` (a `TaskRunner`) and never asks where it runs: `LocalTasks` runs it in this
process, the Ray executor's `RayTasks` as Ray tasks and actors. What a runner offers:
- `map` / `map_reduce`: pure module-level functions of (`common`, item), results in the items' order;
- `hold`: objects kept alive for many calls (a search index's shards);
- `embed`: chunks of texts embedded with a step's embedder (Ray: actors holding the model);
- `budget`: the one LLM spending cap every synthesis step of a build shares, wherever its calls run.
Results never depend on the runner, so a build's output does not depend on its executor.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Sequence

#: `TaskRunner.embed`'s items: (vectors, texts encoded elsewhere, cache hits elsewhere) per chunk
Embedded = tuple[Any, int, int]


class Held:
    """Objects held by a runner (`TaskRunner.hold`)."""

    where = "this process"

    def call(self, method: str, *args: Any) -> list[Any]:
        """`method(*args)` on each object; the results in the order of the specs they were made from."""
        raise NotImplementedError

    def close(self) -> None:
        """Let them go."""


class TaskRunner:
    """How a step hands work to an executor; `where` says where it runs (for reports), `remote` whether that is
    outside this process."""

    where = "this process"
    embeds_in = "this process"  # where `embed` runs the model

    @property
    def remote(self) -> bool:
        return self.where != LocalTasks.where

    def map(self, fn: Callable[[Any, Any], Any], common: Any, items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        """(item, fn(common, item)) for each item, in order, lazily (a window of items in flight)."""
        raise NotImplementedError

    def map_reduce(self, map_fn: Callable[[Any, Any], Sequence[Any]], common: Any, items: Sequence[Any],
                   groups: int, reduce_fn: Callable[[Any, int, list[Any]], Any]) -> Iterator[Any]:
        """A shuffle: `map_fn(common, item)` returns one part per group; `reduce_fn(common, g, parts)` gets group
        g's part from every item (in item order). Yields the reductions in group order."""
        raise NotImplementedError

    def hold(self, factory: Callable[[Any], Any], specs: Sequence[Any]) -> Held:
        """Objects `factory(spec)` kept alive for many calls, spread where the runner runs work. A runner that
        cannot send `factory` elsewhere (a closure over this process's arrays) holds them here."""
        raise NotImplementedError

    def embed(self, embedder: Any, chunks: Iterator[list[str]], prefix: str) -> Iterator[Embedded]:
        """Each chunk of texts embedded with `embedder` (`datakit.engines.embed.Embedder`), in chunk order."""
        return ((embedder.encode(texts, prefix), 0, 0) for texts in chunks)

    def budget(self, limit_usd: float | None) -> Any:
        """A spending cap (`datakit.llm.client.Budget`'s interface) shared by every place this runner runs work."""
        from datakit.llm.client import Budget

        return Budget(limit_usd)


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
