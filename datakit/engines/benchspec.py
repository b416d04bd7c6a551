"""Benchmark spec files for `datakit bench build --from-spec`: the test texts of benchmarks whose splits live
inside files (a `split` column, as SICK has) or behind `hf:` / `sql:`, in the recipe's source syntax.

```yaml
tasks:
  - name: SICK-R                      # the pack's task name
    split: test                       # the pack's split name (default test)
    path: SICK.txt                    # or hf: {...}, sql: "..."; format, csv: as in recipes
    where: {SemEval_set: TEST}        # only these rows
    columns: {text_a: sentence_A, text_b: sentence_B}   # pack field -> source column: the texts to check
allow_paths: []                       # folders beyond the spec's own it may read (as in recipes)
```
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from pydantic import Field, model_validator

from datakit.sources import ColumnSpec, Sandbox, SourceError, SourceLocation, read_source
from embedkit.configfile import Strict, load_yaml, validate


class BenchTask(SourceLocation):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.\-]+$")
    split: str = Field("test", pattern=r"^[A-Za-z0-9_.\-]+$")

    @model_validator(mode="after")
    def _texts_named(self) -> "BenchTask":
        if not self.columns:
            raise ValueError("columns: name the text columns, {field: source column}, e.g. {text_a: sentence1}")
        return self


class BenchSpec(Strict):
    tasks: list[BenchTask] = Field(..., min_length=1)
    allow_paths: list[str] = []


def load_bench_spec(path: Path) -> tuple[BenchSpec, Sandbox]:
    """The spec and the sandbox it reads in (its own folder and `allow_paths`); ConfigError naming key and line."""
    data, root = load_yaml(path, "bench spec")
    spec = validate(BenchSpec, data, path, root, what="bench spec")
    return spec, Sandbox.of(path.parent, spec.allow_paths, owner="bench spec")


def texts_from_spec(path: Path, within: Sandbox | None = None) -> Iterator[tuple[str, str, str, list[str]]]:
    """(task, split, field, texts) for every task and text column of a spec; rows whose text is missing or not
    text are left out (a benchmark row without text cannot leak). `within`: the sandbox of the recipe that names
    the spec, which then limits what the spec reads (its paths still resolve against its own folder)."""
    spec, sandbox = load_bench_spec(path)
    if within is not None:
        sandbox = Sandbox(sandbox.base_dir, within.roots, within.owner)
        if not within.allows(sandbox.base_dir):
            raise SourceError(f"bench spec {path}: its folder {sandbox.base_dir} is outside the {within.owner}'s "
                              f"folder and allow_paths; a spec named by a {within.owner} must sit inside them")
    for task in spec.tasks:
        fields = dict(task.columns)
        texts: dict[str, list[str]] = {f: [] for f in fields}
        source = task.model_copy(update={"columns": {}})
        for chunk in read_source(source, sandbox, ColumnSpec(list(dict.fromkeys(fields.values())),
                                                             scalar=set(fields.values()))):
            for field, column in fields.items():
                texts[field] += [t for t in chunk.table.column(column).to_pylist() if isinstance(t, str) and t.strip()]
        if not any(texts.values()):
            raise SourceError(f"{path}: task {task.name}: no text read (check `where:` and `columns:`)")
        for field, values in texts.items():
            yield task.name, task.split, field, values
