"""Evaluation: score models on local task files (offline) or on MTEB/CMTEB tasks through the `mteb` package.

Every number comes from mteb's own evaluators and metric code (local tasks run as mteb task classes), so a
score equals the leaderboard's on the same data. `trainer eval` is the command; `evaluate_models` the function.
This package runs beside the data stack (it reads task files with datakit's source readers); the training loop
imports it only when a config has an `eval:` section.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from trainer.config import DEFAULT_QUERY_TEMPLATE
from trainer.eval.taskfile import TaskFileError, load_task_file


@dataclass
class EvalRequest:
    models: list[str]
    out: str
    tasks_file: str | None = None
    mteb_benchmark: str | None = None
    mteb_tasks: list[str] = field(default_factory=list)
    task_instructions: bool = False  # mteb tasks: use the task's own prompt as its instruction (implies instruct)
    prompts: str = "auto"  # auto | instruct | model | none | a prompts file (trainer.eval.encoder.choose_prompts)
    batch_size: int | None = None
    device: str | None = None
    max_length: int | None = None
    name: str | None = None  # results name for a single model
    save_predictions: bool = False
    resume: bool = False


@dataclass
class ModelSummary:
    model: str
    name: str
    revision: str
    outcomes: list[Any]
    texts_per_s: float
    markdown: str
    prompts: str = ""  # which prompts were used, and why


def evaluate_models(req: EvalRequest, log: Callable[[str], None] = print) -> list[ModelSummary]:
    """Check everything cheap first (task file, model paths), then load each model and run every task."""
    from trainer.eval.encoder import PROMPT_MODES, check_model_arg, read_prompts_file

    task_file = load_task_file(req.tasks_file) if req.tasks_file else None
    for m in req.models:
        check_model_arg(m)
    prompts = "instruct" if req.task_instructions and req.prompts == "auto" else req.prompts
    if prompts not in PROMPT_MODES:
        read_prompts_file(prompts)  # a bad file fails here, before any model loads
    if req.name and len(req.models) > 1:
        raise ValueError("--name names one model; give it with a single MODEL")

    from trainer.eval.run import local_tasks, mteb_tasks, quiet

    with quiet():
        tasks = local_tasks(task_file) if task_file else mteb_tasks(req.mteb_benchmark, req.mteb_tasks)
    if not tasks:
        raise ValueError("no tasks to run (give --tasks FILE, --mteb NAME, --cmteb or --mteb-tasks A,B)")
    from trainer.eval.status import EvalStatus
    from trainer.folders import claim_eval

    claim_eval(req.out)  # never a folder holding files the trainer did not write
    with EvalStatus(Path(req.out), req.models, [t.metadata.name for t in tasks]) as status:
        summaries = _evaluate(req, tasks, task_file, prompts, log)
        status.failed = [f"{s.name}/{o.task}" for s in summaries for o in s.outcomes if o.error]
        return summaries


def _evaluate(req: EvalRequest, tasks: list[Any], task_file: Any, prompts: str,
              log: Callable[[str], None]) -> list[ModelSummary]:
    from trainer.eval.encoder import EvalEncoder, ModelNotFound, choose_prompts, load_backend
    from trainer.eval.report import read_results, write_summary
    from trainer.eval.run import evaluate_tasks, instructions_of, quiet

    instructions = instructions_of(tasks, task_file, req.task_instructions)
    batch_size = req.batch_size or (task_file.spec.batch_size if task_file else 32)
    template = task_file.spec.query_template if task_file else DEFAULT_QUERY_TEMPLATE
    out = Path(req.out)
    summaries = []
    for m in req.models:
        log(f"model {m}")
        try:
            with quiet():
                backend = load_backend(m, device=req.device, batch_size=batch_size, max_length=req.max_length)
        except (OSError, ValueError) as exc:
            raise ModelNotFound(f"model {m}: cannot load it: {str(exc).splitlines()[0]}") from None
        choice = choose_prompts(prompts, backend, instructions, template)
        log(f"  prompts: {choice.note}")
        encoder = EvalEncoder(backend, instructions, template, name=req.name, choice=choice)
        meta = encoder.mteb_model_meta
        preds = out / "predictions" / meta.model_name_as_path() / meta.revision if req.save_predictions else None
        outcomes = evaluate_tasks(encoder, tasks, out, batch_size=batch_size, prediction_folder=preds,
                                  resume=req.resume, log=log)
        if preds is not None:
            from trainer.eval.trec import write_runs

            write_runs(preds)
        done = {o.task for o in outcomes if o.error is None}
        scores = [s for s in read_results(out) if s.model == meta.name and s.revision == meta.revision
                  and s.task in done]
        md = write_summary(out, scores, meta.name, prompts=choice.note) if scores else ""
        rate = encoder.stats["embedded"] / encoder.stats["seconds"] if encoder.stats["seconds"] else 0.0
        summaries.append(ModelSummary(m, meta.name, meta.revision, outcomes, rate, md, choice.note))
    return summaries


__all__ = ["EvalRequest", "ModelSummary", "TaskFileError", "evaluate_models"]
