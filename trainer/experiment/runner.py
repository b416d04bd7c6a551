"""Running an experiment: build each distinct corpus once, train and score each (variant, seed), resumably.

Layout of OUT (a workspace several experiments may share; equal builds and runs are reused across them):

    OUT/builds/{build key}/          datakit output of a resolved recipe
    OUT/runs/{run key}/train/        trainer output (checkpoints, log.jsonl, model/)
    OUT/runs/{run key}/eval/         `trainer eval` results (mteb layout)
    OUT/runs/{run key}/result.json   written last: the run is done (or failed.json: the error)
    OUT/{experiment}/                results.csv, summary.md|csv, plots.png, index.html

A killed experiment continues from its finished runs (and a half-trained run from its checkpoints). A run that
fails is recorded with its error and the others go on; the command then exits non-zero.
"""
from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from trainer.config import TrainConfig
from trainer.experiment.spec import (Experiment, Variant, code_versions, corpus_digest, eval_digest, key_of,
                                     run_parts)

if TYPE_CHECKING:
    from trainer.experiment.progress import RunBar

UNTRAINED = "(not fine-tuned)"


@dataclass
class RunSpec:
    """Everything one (variant, seed) run needs (it travels to Ray workers: plain data and a pydantic config)."""

    experiment: str
    variant: str
    seed: int
    key: str
    folder: str
    build: str
    config: TrainConfig
    eval_path: str
    untrained: bool = False
    parts: dict[str, Any] | None = None  # what the key covers (spec.run_parts), recorded in result.json

    def describe(self) -> dict[str, Any]:
        """What run.json records."""
        return {**{k: v for k, v in self.__dict__.items() if k != "config"},
                "config": self.config.model_dump(mode="json")}


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def build_corpus(exp: Experiment, variant: Variant, out: Path, log: Callable[[str], None]) -> Path:
    """Build a variant's corpus into OUT/builds/{key}; datakit skips a build that is up to date (same resolved
    recipe, same input files)."""
    from datakit.pipeline import build

    folder = out / "builds" / variant.build_key
    t0 = time.time()
    result = build(variant.loaded, folder)
    if not result.skipped:
        log(f"built {folder} (variant {variant.name}) in {time.time() - t0:.0f} s")
    return folder


def _progress(log: Callable[[str], None] | None, steps: list[int], bar: RunBar | None = None
              ) -> Callable[[Any], None]:
    """Training's log records for `bar` (every step), else as about ten lines per stage for `log`; the
    trainer's messages as lines."""
    shown: dict[int, int] = {}

    def on_record(rec: Any) -> None:
        if isinstance(rec, dict) and "step" in rec and "loss" in rec:
            stage, step = rec.get("stage", 1), rec["step"]  # stages are numbered from 1 in the log
            index = stage - 1
            total = steps[index] if 0 <= index < len(steps) else step
            losses = rec["loss"] if isinstance(rec["loss"], dict) else {"all": rec["loss"]}
            mean = sum(losses.values()) / max(len(losses), 1)
            if bar is not None:
                bar.step(sum(steps[:index]) + step, mean)
                return
            tenth = step * 10 // max(total, 1)
            if log is not None and (tenth > shown.get(stage, 0) or step == total):
                shown[stage] = tenth
                log(f"    stage {stage} step {step}/{total}  loss {mean:.4f}")
        elif isinstance(rec, str) and (log is not None or bar is not None):
            (bar.line if bar is not None else log)(f"    {rec}")
    return on_record


def run_one(spec: RunSpec, log: Callable[[str], None] | None = None, bar: RunBar | None = None) -> dict[str, Any]:
    """Train (unless untrained) and score one run; writes result.json or failed.json and returns it. `bar`
    shows every training step and each evaluation task as it is scored; without one, `log` hears training
    every tenth of its steps and each evaluation task."""
    folder = Path(spec.folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "run.json", spec.describe())
    (folder / "failed.json").unlink(missing_ok=True)
    t0 = time.time()
    try:
        from trainer.eval import EvalRequest, evaluate_models

        if spec.untrained:
            model, train_s = spec.config.model.name_or_path, 0.0
        else:
            from trainer.train import train

            cfg = spec.config.model_copy(deep=True)
            cfg.seed, cfg.output_dir = spec.seed, str(folder / "train")
            cfg.data.shards, cfg.data.seed = spec.build, spec.seed
            model = str(train(cfg, resume=True, log=_progress(log, [stage.steps for stage in cfg.stages], bar)))
            train_s = time.time() - t0
        t1 = time.time()
        [summary] = evaluate_models(EvalRequest(models=[model], out=str(folder / "eval"), tasks_file=spec.eval_path,
                                                name=f"experiment/{spec.key}"),
                                    log=_eval_log(log, bar))
        failed = [f"{o.task}: {o.error}" for o in summary.outcomes if o.error]
        if failed:
            raise RuntimeError("evaluation failed: " + "; ".join(failed))
        result = {"variant": spec.variant, "seed": spec.seed, "key": spec.key, "key_parts": spec.parts,
                  "train_s": round(train_s, 1),
                  "eval_s": round(time.time() - t1, 1),
                  "scores": {o.task: {"type": o.type, "main_score": o.main_score, "value": o.value}
                             for o in summary.outcomes}}
        _write_json(folder / "result.json", result)
        return result
    except Exception as exc:  # noqa: BLE001 - a failed run is recorded, the others go on
        failure = {"variant": spec.variant, "seed": spec.seed, "key": spec.key,
                   "error": f"{type(exc).__name__}: {exc}".strip(), "traceback": traceback.format_exc()[-4000:],
                   "seconds": round(time.time() - t0, 1)}
        _write_json(folder / "failed.json", failure)
        return failure


def _eval_log(log: Callable[[str], None] | None, bar: RunBar | None) -> Callable[[str], None]:
    if bar is not None:
        return lambda m: bar.note(f"eval {m.strip()}")
    return (lambda m: log(f"    eval {m.strip()}")) if log else (lambda _: None)


def plan_runs(exp: Experiment, out: Path, builds: dict[str, Path]) -> list[RunSpec]:
    """Every (variant, seed) run, plus the untrained model scored once as a reference. A run's key covers what
    decides its result (`spec.run_parts`): an edited input file, task data or a new version of the code gives new
    keys, so a stale result is never reused."""
    versions, evals = code_versions(), eval_digest(exp.eval_path)
    corpora = {key: corpus_digest(folder) for key, folder in builds.items()}
    train_dir = exp.train_path.parent
    runs = []
    for v in exp.variants:
        for seed in exp.seeds:
            parts = run_parts(v, seed, v.train, train_dir, corpora[v.build_key], evals, versions)
            key = key_of(parts)
            runs.append(RunSpec(exp.name, v.name, seed, key, str(out / "runs" / key), str(builds[v.build_key]),
                                v.config, str(exp.eval_path), parts=parts))
    base = next(v for v in exp.variants if v.name == exp.spec.base)
    parts = run_parts(None, 0, {"model": base.train.get("model")}, train_dir, None, evals, versions)
    key = key_of(parts, "untrained-")  # the untrained model depends on the model and the evaluation only
    runs.append(RunSpec(exp.name, UNTRAINED, 0, key, str(out / "runs" / key), str(builds[base.build_key]),
                        base.config, str(exp.eval_path), untrained=True, parts=parts))
    return runs


def run_experiment(exp: Experiment, out: str | Path, executor: str = "local", gpus_per_run: float = 0.0,
                   log: Callable[[str], None] = print, report_only: bool = False,
                   bar: RunBar | None = None) -> list[dict[str, Any]]:
    """Build, train and score every run not finished yet; return every run's result (or failure).
    `report_only`: run nothing, return the finished runs (a partial report while others still run).
    `bar`: a progress bar over the runs (a terminal); else a line per run and progress lines to `log`."""
    out = Path(out).resolve()  # runs resolve paths against their training config's folder
    out.mkdir(parents=True, exist_ok=True)
    builds: dict[str, Path] = {}
    build_errors: dict[str, str] = {}
    for v in exp.variants:
        if v.build_key in builds or v.build_key in build_errors:
            continue
        if report_only:
            builds[v.build_key] = out / "builds" / v.build_key
            continue
        try:
            builds[v.build_key] = build_corpus(exp, v, out, log)
        except Exception as exc:  # noqa: BLE001 - its variants fail, the others go on
            build_errors[v.build_key] = f"build failed: {type(exc).__name__}: {exc}"
            builds[v.build_key] = out / "builds" / v.build_key
            log(f"  {build_errors[v.build_key]}")
    runs = plan_runs(exp, out, builds)
    by_variant = {v.name: v for v in exp.variants}
    pending, results = [], []
    for r in runs:
        done = Path(r.folder) / "result.json"
        if done.exists():
            results.append(json.loads(done.read_text()))
        elif not r.untrained and by_variant[r.variant].build_key in build_errors:
            failure = {"variant": r.variant, "seed": r.seed, "key": r.key,
                       "error": build_errors[by_variant[r.variant].build_key]}
            Path(r.folder).mkdir(parents=True, exist_ok=True)
            _write_json(Path(r.folder) / "failed.json", failure)
            results.append(failure)
        else:
            pending.append(r)
    failed = sum(1 for r in results if "error" in r)
    log(f"{exp.name}: {len(runs)} runs: {len(results) - failed} already done, {failed} failed (their corpus did "
        f"not build), {len(pending)} to run" if failed else
        f"{exp.name}: {len(runs)} runs: {len(results)} already done, {len(pending)} to run")
    if report_only:
        for r in pending:
            log(f"  not run yet: {r.variant} seed {r.seed}")
        return results
    if bar is not None:
        bar.runs(len(pending))
    if executor == "ray":
        results += _run_on_ray(pending, gpus_per_run, log, bar)
    else:
        for i, r in enumerate(pending, 1):
            label = f"[{i}/{len(pending)}] {r.variant} seed {r.seed}"
            if bar is not None:
                bar.run(label, 0 if r.untrained else sum(stage.steps for stage in r.config.stages))
            else:
                log(label)
            res = run_one(r, log, bar)
            outcome = "FAILED: " + res["error"] if "error" in res else _brief(res)
            if bar is not None:
                bar.finished(f"{label}: {outcome}")
            else:
                log(f"  {outcome}")
            results.append(res)
    return results


def _brief(result: dict[str, Any]) -> str:
    scores = ", ".join(f"{t} {s['value']:.4f}" for t, s in result["scores"].items())
    return f"train {result['train_s']:.0f} s, eval {result['eval_s']:.0f} s: {scores}"


def _run_on_one_cpu(spec: RunSpec) -> dict[str, Any]:
    """A Ray task holds one CPU, so it runs one torch thread: tasks sharing a node's cores do not oversubscribe
    them (two 1-thread MiniLM runs at once train 1.2x the steps per second of one on 2 threads: docs/NOTES.md)."""
    import torch

    torch.set_num_threads(1)
    return run_one(spec)


def _run_on_ray(pending: list[RunSpec], gpus: float, log: Callable[[str], None],
                bar: RunBar | None = None) -> list[dict[str, Any]]:
    """One Ray task per run (GPUs as Ray resources); results in the order they finish."""
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True)
    remote = ray.remote(num_cpus=1, num_gpus=gpus)(_run_on_one_cpu)
    refs = {remote.remote(r): r for r in pending}
    results = []
    while refs:
        done, _ = ray.wait(list(refs), num_returns=1)
        r = refs.pop(done[0])
        res = ray.get(done[0])
        line = f"{r.variant} seed {r.seed}: {'FAILED: ' + res['error'] if 'error' in res else _brief(res)}"
        if bar is not None:
            bar.finished(line)
        else:
            log(line)
        results.append(res)
    return results
