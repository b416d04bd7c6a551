"""Evaluation during training: a config's `eval:` section scores the live model on a task file before training,
every N steps and at the end of each stage; scores go to log.jsonl and the metric sinks like the losses, and
`keep_best` exports the best model so far to OUTPUT_DIR/best.

```yaml
eval:
  tasks: eval-demo.yaml          # a `trainer eval` task file, relative to the config
  every: 0                       # steps; 0: only before training and at the end of each stage
  keep_best: {task: STS-demo}    # metric: the task's main score unless given
```

The model is prompted as `trainer eval --prompts auto` will prompt the exported model (task instructions in
the training template when the model trains with instructions, else its saved prompts, else none), so a score
taken here equals `trainer eval` on the exported model. Every process runs the same evaluation through the wrapped model
(FSDP and ZeRO-3 need all ranks in each forward); only the main process writes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from trainer.config import EvalSettings

TASK_WIDTH = 28


class TrainingEval:
    """Loads the task file once; each call scores the model as it is and returns {task: {metric: value}}."""

    def __init__(self, settings: EvalSettings, out: Path, prompts: dict[str, str], max_length: int,
                 is_main: bool, log: Callable[[Any], None] = print, query_template: str | None = None):
        from trainer.eval.run import local_tasks
        from trainer.eval.taskfile import load_task_file

        self.settings, self.out, self.prompts, self.is_main, self.log = settings, out, prompts, is_main, log
        self.max_length = settings.max_length or max_length
        self.query_template = query_template if prompts else None  # what the export declares (trainer.export)
        self.task_file = load_task_file(settings.tasks)
        self.tasks = local_tasks(self.task_file)
        names = {t.metadata.name: t for t in self.tasks}
        if settings.keep_best and settings.keep_best.task not in names:
            raise ValueError(f"eval.keep_best.task {settings.keep_best.task!r} is not in {settings.tasks} "
                             f"(tasks: {', '.join(names)})")
        self.best_path = out / "best" / "best.json"
        self.best = json.loads(self.best_path.read_text())["value"] if self.best_path.exists() else None
        self.history: list[tuple[str, dict[str, float]]] = []
        self.last: list[dict[str, Any]] = []  # the latest evaluation: task, type, metric, value, split

    def __call__(self, model: Any, forward: Callable, stage: int, step: int, global_step: int,
                 export: Callable[[Path], None]) -> dict[str, dict[str, float]]:
        from trainer.eval.encoder import EvalEncoder, choose_prompts, trainer_backend
        from trainer.eval.run import evaluate_tasks, quiet

        revision = f"stage{stage}-step{step}"
        backend = trainer_backend(model, f"train/{self.out.name or 'model'}", revision, self.settings.batch_size,
                                  self.max_length, self.prompts, forward)
        backend.query_template = self.query_template
        instructions = {t.name: t.instruction for t in self.task_file.tasks if t.instruction}
        template = self.task_file.spec.query_template
        encoder = EvalEncoder(backend, instructions, template,
                              choice=choose_prompts("auto", backend, instructions, template))
        with quiet():
            outcomes = evaluate_tasks(encoder, self.tasks, self.out / "eval" if self.is_main else None,
                                      batch_size=self.settings.batch_size, log=lambda _: None)
        scores = {o.task: {o.main_score: o.value, **(o.metrics or {})} for o in outcomes if o.error is None}
        main = {o.task: o.value for o in outcomes if o.error is None}
        failed = {o.task: o.error for o in outcomes if o.error is not None}
        self.history.append((f"stage {stage} step {step}" if step else "before training", main))
        splits = {t.name: t.split for t in self.task_file.tasks}
        self.last = [{"task": o.task, "type": o.type, "metric": o.main_score, "value": o.value,
                      "split": splits.get(o.task, "test")} for o in outcomes if o.error is None]
        if self.is_main:
            record = {"stage": stage, "step": step, "global_step": global_step,
                      "eval": {t: round(float(v), 6) for t, v in main.items()}}
            if failed:
                record["eval_failed"] = failed
            self.log(record)
            self._keep_best(scores, stage, step, export)
        return scores

    def _keep_best(self, scores: dict[str, dict[str, float]], stage: int, step: int,
                   export: Callable[[Path], None]) -> None:
        kb = self.settings.keep_best
        if not kb or kb.task not in scores:
            return
        task_scores = scores[kb.task]
        metric = kb.metric or next(iter(task_scores))
        if metric not in task_scores:
            raise ValueError(f"eval.keep_best.metric {metric!r}: task {kb.task} has {', '.join(task_scores)}")
        value = task_scores[metric]
        if self.best is None or value > self.best:
            self.best = value
            folder = self.out / "best"
            export(folder)
            self.best_path.write_text(json.dumps({"task": kb.task, "metric": metric, "value": value,
                                                  "stage": stage, "step": step}, indent=2))

    def before_after(self) -> tuple[str, list[str]]:
        """The held-out scores before training and now, side by side, and a plain warning for every task that
        training made worse than the model it started from. ("", []) without a score before training."""
        if len(self.history) < 2 or self.history[0][0] != "before training":
            return "", []
        before, after = self.history[0][1], self.history[-1][1]
        lines = [f"{'task':<{TASK_WIDTH}}{'before':>10}{'after':>10}{'change':>10}"]
        warnings = []
        for t in before:
            if t not in after:
                continue
            lines.append(f"{t:<{TASK_WIDTH}}{before[t]:>10.4f}{after[t]:>10.4f}{after[t] - before[t]:>+10.4f}")
            if round(after[t], 4) < round(before[t], 4):
                warnings.append(f"{t} {before[t]:.4f} -> {after[t]:.4f}: worse than the model you started from")
        return "\n".join(lines), warnings

    def table(self) -> str:
        """The scores of every evaluation so far, one column per evaluation point."""
        if not self.history:
            return ""
        tasks = list(dict.fromkeys(t for _, scores in self.history for t in scores))
        head = f"{'task':<{TASK_WIDTH}}" + "".join(f"{label:>22}" for label, _ in self.history)
        lines = [head]
        for t in tasks:
            cells = "".join(f"{scores[t]:>22.4f}" if t in scores else f"{'-':>22}" for _, scores in self.history)
            lines.append(f"{t:<{TASK_WIDTH}}{cells}")
        return "\n".join(lines)

