"""Run tasks on models through `mteb.evaluate`, write mteb's results layout, and summarise.

Results go to `OUT/results/{org}__{model}/{revision}/{task}.json` (with `model_meta.json`): the layout of
mteb's `ResultCache(OUT)`, so `mteb.ResultCache(OUT).load_results()` and other mteb tooling read them. Each
split's scores also carry an `embedkit` entry: the task type, the prompts used on each side and where they
came from, and what reading the task's data skipped.
"""
from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from trainer.eval.encoder import EvalEncoder
from trainer.eval.taskfile import LoadedTaskFile


@dataclass
class TaskOutcome:
    task: str
    type: str
    main_score: str
    value: float | None
    seconds: float
    error: str | None = None
    path: Path | None = None
    metrics: dict[str, float] | None = None  # every numeric metric of the task (mean over splits/subsets)


def local_tasks(task_file: LoadedTaskFile) -> list[Any]:
    """The task file's tasks as mteb task objects, their data read now: a source that cannot be read (a missing
    file or column, no usable rows) is an error naming the task file's key and line, before any model loads."""
    from datakit.sources import SourceError
    from trainer.eval.local import make_task
    from trainer.eval.taskfile import TaskFileError

    tasks, errors = [], []
    for i, spec in enumerate(task_file.tasks):
        try:
            task = make_task(spec, task_file.sandbox)
            task.load_data()
            tasks.append(task)
        except (SourceError, ValueError, OSError) as exc:
            errors.append(f"{task_file.where(i, *_key_of(spec, str(exc)))}: {exc}")
    if errors:
        raise TaskFileError("\n".join(errors))
    return tasks


def _key_of(spec: Any, message: str) -> tuple[str, ...]:
    """The task-file key an error is about: the role mapped to a missing column, else the task's name."""
    import re

    from trainer.eval.local import columns_of

    missing = re.search(r"no column '([^']+)'", message)
    for part, cols in columns_of(spec).items() if missing else ():
        for role, col in cols.items():
            if col == missing.group(1):
                own = spec.sources()[part] is spec
                return ("columns", role) if own else (part, "columns", role)
    return ("name",)


def mteb_tasks(benchmark: str | None = None, names: list[str] | None = None) -> list[Any]:
    """Tasks from mteb's registry: a benchmark by name ("MTEB(eng, v2)", "MTEB(cmn, v1)") or task names.
    Their data comes from the Hugging Face hub when they run."""
    import mteb

    if benchmark:
        try:
            return list(mteb.get_benchmark(benchmark).tasks)
        except KeyError:
            raise ValueError(f"mteb has no benchmark {benchmark!r}") from None
    tasks = []
    for name in names or []:
        try:
            tasks.append(mteb.get_task(name))
        except KeyError:
            raise ValueError(f"mteb has no task {name!r}") from None
    return tasks


def instructions_of(tasks: list[Any], task_file: LoadedTaskFile | None, from_mteb: bool) -> dict[str, str]:
    """Each task's instruction: the task file's, or (with `from_mteb`) the mteb task's own prompt."""
    out = {t.name: t.instruction for t in task_file.tasks if t.instruction} if task_file else {}
    if from_mteb:
        for task in tasks:
            prompt = task.metadata.prompt
            if isinstance(prompt, dict):
                prompt = prompt.get("query")
            prompt = prompt or getattr(task, "abstask_prompt", "")
            if prompt and task.metadata.name not in out:
                out[task.metadata.name] = prompt
    return out


@contextmanager
def quiet() -> Iterator[None]:
    """mteb's notes about superseded tasks and its info logs are noise in our console."""
    import datasets
    from transformers.utils import logging as hf_logging

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*superseded.*")
            warnings.filterwarnings("ignore", category=FutureWarning)
            for name in ("mteb", "datasets", "sentence_transformers"):
                logging.getLogger(name).setLevel(logging.ERROR)
            yield
    finally:
        if bars:
            datasets.enable_progress_bars()
        hf_logging.enable_progress_bar()


def evaluate_tasks(encoder: EvalEncoder, tasks: list[Any], out: str | Path | None, *, batch_size: int = 32,
                   prediction_folder: Path | None = None, resume: bool = False,
                   log: Callable[[str], None] = print) -> list[TaskOutcome]:
    """Evaluate one model on every task; a task that fails is reported and the others go on.
    Results are written to `out` (mteb's layout) unless it is None."""
    import mteb

    cache = mteb.ResultCache(Path(out)) if out is not None else None
    outcomes = []
    with quiet():
        for task in tasks:
            meta = task.metadata
            t0 = time.perf_counter()
            try:
                result = mteb.evaluate(encoder, task, cache=cache, co2_tracker=False, show_progress_bar=False,
                                       overwrite_strategy="only-missing" if resume else "always",
                                       encode_kwargs={"batch_size": batch_size, "show_progress_bar": False},
                                       prediction_folder=prediction_folder).task_results[0]
            except Exception as exc:  # noqa: BLE001 - one task's failure is reported, the rest go on
                msg = f"{type(exc).__name__}: {exc}".strip()
                outcomes.append(TaskOutcome(meta.name, meta.type, meta.main_score, None,
                                            time.perf_counter() - t0, msg.splitlines()[0][:300]))
                log(f"  {meta.name}: FAILED ({outcomes[-1].error})")
                continue
            path = None
            _annotate(result, task, encoder)
            if cache is not None:
                path = cache.get_task_result_path(meta.name, encoder.mteb_model_meta)
                result.to_disk(path)
            value = result.get_score()
            outcomes.append(TaskOutcome(meta.name, meta.type, meta.main_score, value, time.perf_counter() - t0,
                                        path=path, metrics=_metrics(result)))
            report = getattr(task, "data_report", None)
            skipped = f"  (skipped: {dict(report.skipped)})" if report is not None and report.skipped else ""
            log(f"  {meta.name:<32} {meta.main_score} = {value:.5f}{skipped}")
    return outcomes


def _metrics(result: Any) -> dict[str, float]:
    """Each numeric metric, averaged over the result's splits and subsets."""
    entries = [e for split in result.scores.values() for e in split]
    keys = [k for k, v in entries[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: float(sum(e[k] for e in entries) / len(entries)) for k in keys if all(k in e for e in entries)}


def _annotate(result: Any, task: Any, encoder: EvalEncoder) -> None:
    report = getattr(task, "data_report", None)
    extra = {"type": task.metadata.type, "main_score": task.metadata.main_score, "prompts": encoder.prompts_used.get(task.metadata.name, {}),
             "data": report.as_dict() if report is not None else None}
    for entries in result.scores.values():
        for entry in entries:
            entry["embedkit"] = extra
