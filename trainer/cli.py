"""`trainer`: train embedding models on datakit shards, score them, and run experiments.

Exit codes: 0 success; 1 the run failed; 2 the command line or a config file is wrong (nothing ran).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from embedkit.clitools import EXIT_BAD_INPUT, console, err, fail, guarded, set_debug

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="print the traceback of an unexpected error")) -> None:
    set_debug(debug)


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"  # one process of a multi-process launch prints


@app.command()
def inspect(shards: Path = typer.Argument(..., help="output folder of `datakit build`")) -> None:
    """What the trainer sees in a shard folder: records per kind and dataset."""
    from trainer.data import dataset_index, open_shards

    try:
        tables = open_shards(shards)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    table = Table("kind", "dataset", "records")
    table.columns[2].justify = "right"
    for kind, t in tables.items():
        for name, rows in sorted(dataset_index(t).items()):
            table.add_row(kind, name, f"{len(rows):,}")
    console.print(table)


def _console_log(rec: Any) -> None:
    """Step records show in the progress bar (log.jsonl keeps them all); eval records and messages print."""
    if isinstance(rec, dict) and "step" in rec and "loss" in rec:
        return
    from tqdm.auto import tqdm

    tqdm.write(rec if isinstance(rec, str) else json.dumps(rec), file=None)


@app.command()
def run(
    config: Path = typer.Argument(..., help="training config (YAML)"),
    out: Optional[Path] = typer.Option(None, "--out", "--output-dir", "-o",
                                       help="the run's folder (default: the config's output_dir)"),
    shards: Optional[Path] = typer.Option(None, "--shards", help="a datakit output folder (default: data.shards)"),
    restart: bool = typer.Option(False, "--restart", help="ignore checkpoints in the output folder"),
) -> None:
    """Train both stages from a YAML config, then export a SentenceTransformer model (OUT/model)."""
    from trainer.config import check_paths, load_config

    cfg = load_config(config)  # a bad key, type or range: exit 2 naming file, line and key
    if out is not None:
        cfg.output_dir = str(out)
    if shards is not None:
        cfg.data.shards = str(shards)
    cfg.runnable()
    try:
        check_paths(cfg)
    except FileNotFoundError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    from embedkit.folderlock import FolderBusy
    from trainer.data import NotEnoughData
    from trainer.train import train

    try:
        final = train(cfg, resume=not restart, log=_console_log, progress=True)
    except (FolderBusy, NotEnoughData) as exc:
        fail(str(exc))
    if _is_main():
        console.print(f"[bold green]model:[/] {final}  (SentenceTransformer({str(final)!r}) loads it)", soft_wrap=True)


@app.command("eval")
def eval_cmd(
    models: Optional[list[str]] = typer.Argument(
        None, metavar="[MODEL]...",
        help="exported trainer folder, SentenceTransformer folder or hub id, embedded-minilm, embedded-smollm2"),
    tasks: Optional[Path] = typer.Option(None, "--tasks", help="a task file (YAML, the recipe's source syntax)"),
    mteb: Optional[str] = typer.Option(None, "--mteb", metavar="BENCHMARK",
                                       help='an mteb benchmark, e.g. "MTEB(eng, v2)" (needs the hub)'),
    cmteb: bool = typer.Option(False, "--cmteb", help='the CMTEB benchmark ("MTEB(cmn, v1)")'),
    mteb_tasks: Optional[str] = typer.Option(None, "--mteb-tasks", metavar="A,B",
                                             help="mteb task names, e.g. STSBenchmark,SciFact"),
    task_instructions: bool = typer.Option(False, "--task-instructions",
                                           help="mteb tasks: use each task's own prompt as its instruction "
                                                "(implies --prompts instruct)"),
    prompts: str = typer.Option("auto", "--prompts", metavar="MODE|FILE",
                                help="auto: task instructions if the model declares an instruction template, else "
                                     "its own saved prompts, else none; instruct: always apply task instructions; "
                                     "model: only the model's saved prompts; none; or a JSON/YAML file of prompts "
                                     "(task name, task type, query, document -> prompt)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="results folder (eval), or the comparison's folder (--compare)"),
    compare: Optional[list[Path]] = typer.Option(None, "--compare", metavar="RESULTS_DIR",
                                                 help="compare results folders side by side (repeatable; or give "
                                                      "the folders as arguments after --compare)"),
    name: Optional[str] = typer.Option(None, "--name", help="the model's name in the results (org/name)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1),
    max_length: Optional[int] = typer.Option(None, "--max-length", min=1, help="tokens per text (default: the model's)"),
    device: Optional[str] = typer.Option(None, "--device"),
    save_predictions: bool = typer.Option(False, "--save-predictions", help="keep mteb's predictions and TREC runs"),
    resume: bool = typer.Option(False, "--resume", help="skip tasks already in the results folder"),
) -> None:
    """Score models on a task file (offline) or MTEB tasks; or compare results folders (--compare)."""
    if compare:
        from trainer.eval.report import compare as compare_results, write_comparison

        if tasks or mteb or cmteb or mteb_tasks:
            fail("--compare reads results folders only; give no tasks with it", EXIT_BAD_INPUT)
        folders = [*compare, *(Path(m) for m in models or [])]  # `--compare A B`: B arrives as an argument
        try:
            comp = compare_results(folders)
        except (FileNotFoundError, ValueError) as exc:
            fail(str(exc))
        from trainer.folders import claim_comparison

        paths = write_comparison(comp, claim_comparison(out or Path("eval-compare")))
        print(comp.markdown())
        console.print("written: " + ", ".join(str(p) for p in paths.values()), soft_wrap=True)
        return
    from trainer.eval import EvalRequest, evaluate_models

    chosen = [x for x in (tasks, mteb, cmteb or None, mteb_tasks) if x]
    if len(chosen) != 1:
        fail("give one of --tasks FILE, --mteb NAME, --cmteb, --mteb-tasks A,B", EXIT_BAD_INPUT)
    if not models:
        fail("give at least one MODEL (a folder, a hub id, embedded-minilm or embedded-smollm2)", EXIT_BAD_INPUT)
    if out is None:
        fail("give --out RESULTS_DIR", EXIT_BAD_INPUT)
    req = EvalRequest(models=list(models), out=str(out), tasks_file=str(tasks) if tasks else None,
                      mteb_benchmark=mteb or ("MTEB(cmn, v1)" if cmteb else None),
                      mteb_tasks=[t.strip() for t in (mteb_tasks or "").split(",") if t.strip()],
                      task_instructions=task_instructions, prompts=prompts, batch_size=batch_size, device=device,
                      max_length=max_length, name=name, save_predictions=save_predictions, resume=resume)
    summaries = evaluate_models(req)  # a bad task file: exit 2 (ConfigError); a model that cannot load: 1
    failed = 0
    for s in summaries:
        print(f"\n{s.name} @ {s.revision} ({s.texts_per_s:.0f} texts/s embedded)")
        print(s.markdown, end="")
        for o in s.outcomes:
            if o.error:
                failed += 1
                err.print(f"FAILED {o.task}: {o.error}", highlight=False, soft_wrap=True)
    print(f"results: {out}/results (mteb layout)")
    if failed:
        raise typer.Exit(1)


@app.command()
def experiment(
    file: Path = typer.Argument(..., metavar="EXPERIMENT", help="an experiment file (YAML)"),
    out: Path = typer.Option(..., "--out", "-o", help="workspace: builds/, runs/ (reused across experiments), results"),
    executor: str = typer.Option("local", "--executor",
                                 help="local, or ray: one Ray task per (variant, seed) run; builds run first"),
    gpus_per_run: float = typer.Option(0.0, "--gpus-per-run", min=0.0, help="Ray GPU resources per run"),
    dry_run: bool = typer.Option(False, "--dry-run", help="resolve and check the variants, run nothing"),
    report_only: bool = typer.Option(False, "--report-only",
                                     help="write the results of the runs finished so far, run nothing"),
    results_csv: Optional[Path] = typer.Option(None, "--results-csv", metavar="CSV",
                                               help="with --report-only: the runs of a results.csv instead of the "
                                                    "run folders (regenerates a published table)"),
) -> None:
    """Build, train and score a grid of recipe/training variants over seeds."""
    from trainer.experiment import load_experiment

    if executor not in ("local", "ray"):
        fail(f"--executor {executor!r}: local or ray", EXIT_BAD_INPUT)
    exp = load_experiment(file)  # every override resolved and validated before anything runs
    if dry_run:
        for v in exp.variants:
            print(f"{v.name}: build {v.build_key}  overrides {v.overrides}")
        print(f"{len(exp.variants)} variants x {len(exp.seeds)} seeds")
        return
    from trainer.experiment.report import read_results_csv, write_results
    from trainer.experiment.runner import run_experiment
    from trainer.folders import claim_experiment

    claim_experiment(out)  # never a folder holding files the trainer did not write
    if results_csv is not None:
        if not report_only:
            fail("--results-csv goes with --report-only (it reports runs, it runs nothing)", EXIT_BAD_INPUT)
        paths = write_results(exp, read_results_csv(results_csv), Path(out))
        print(paths["summary_md"].read_text(encoding="utf-8"))
        print("written: " + ", ".join(str(p) for p in paths.values()))
        return

    if console.is_terminal and not report_only:  # a bar over the runs; logs and pipes get a line per event
        from trainer.experiment.progress import RunBar

        with RunBar(console) as bar:
            results = run_experiment(exp, out, executor=executor, gpus_per_run=gpus_per_run, log=bar.line, bar=bar)
    else:
        results = run_experiment(exp, out, executor=executor, gpus_per_run=gpus_per_run, report_only=report_only)
    paths = write_results(exp, results, Path(out))
    print(paths["summary_md"].read_text(encoding="utf-8"))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    if not report_only and any("error" in r for r in results):
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> None:
    """The `trainer` command: one line and an exit code for whatever escapes a command (embedkit.clitools)."""
    guarded(lambda: app(args=argv, prog_name="trainer"))


if __name__ == "__main__":
    main()
