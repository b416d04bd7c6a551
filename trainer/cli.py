"""`trainer`: training on datakit shards (argparse: the GPU machine has no typer/rich)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from trainer.data import dataset_index, open_shards


def _inspect(args: argparse.Namespace) -> int:
    tables = open_shards(args.shards)
    print(f"{'kind':<16}{'dataset':<24}{'records':>10}")
    for kind, table in tables.items():
        for name, rows in sorted(dataset_index(table).items()):
            print(f"{kind:<16}{name:<24}{len(rows):>10}")
    return 0


def _console(rec) -> None:
    """Step records show in the progress bar (log.jsonl keeps them all); eval records and text print."""
    if isinstance(rec, dict) and "step" in rec and "loss" in rec:
        return
    from tqdm.auto import tqdm

    tqdm.write(rec if isinstance(rec, str) else json.dumps(rec))


def _run(args: argparse.Namespace) -> int:
    from trainer.train import load_config, train

    cfg = load_config(args.config)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    final = train(cfg, resume=not args.restart, log=_console, progress=True)
    if os.environ.get("RANK", "0") == "0":  # one line, not one per process
        print(f"model: {final}  (SentenceTransformer({str(final)!r}) loads it)")
    return 0


def _eval(args: argparse.Namespace) -> int:
    if args.compare:
        from trainer.eval.report import compare, write_comparison

        if args.models or args.tasks or args.mteb or args.cmteb or args.mteb_tasks:
            raise ValueError("--compare reads results folders only; give no MODEL or tasks with it")
        comp = compare(args.compare)
        paths = write_comparison(comp, args.out or "eval-compare")
        print(comp.markdown())
        print("written: " + ", ".join(str(p) for p in paths.values()))
        return 0
    from trainer.eval import EvalRequest, evaluate_models

    sources = [x for x in (args.tasks, args.mteb, args.cmteb, args.mteb_tasks) if x]
    if len(sources) != 1:
        raise ValueError("give one of --tasks FILE, --mteb NAME, --cmteb, --mteb-tasks A,B")
    if not args.models:
        raise ValueError("give at least one MODEL (a folder, a hub id, embedded-minilm or embedded-smollm2)")
    if not args.out:
        raise ValueError("give --out RESULTS_DIR")
    req = EvalRequest(models=args.models, out=args.out, tasks_file=args.tasks,
                      mteb_benchmark=args.mteb or ("MTEB(cmn, v1)" if args.cmteb else None),
                      mteb_tasks=[t.strip() for t in (args.mteb_tasks or "").split(",") if t.strip()],
                      task_instructions=args.task_instructions, batch_size=args.batch_size, device=args.device,
                      max_length=args.max_length, name=args.name, save_predictions=args.save_predictions,
                      resume=args.resume)
    summaries = evaluate_models(req)
    failed = 0
    for s in summaries:
        print(f"\n{s.name} @ {s.revision} ({s.texts_per_s:.0f} texts/s embedded)")
        print(s.markdown, end="")
        for o in s.outcomes:
            if o.error:
                failed += 1
                print(f"FAILED {o.task}: {o.error}")
    print(f"results: {args.out}/results (mteb layout)")
    return 1 if failed else 0


def _experiment(args: argparse.Namespace) -> int:
    from trainer.experiment import load_experiment

    exp = load_experiment(args.experiment)  # every override resolved and validated before anything runs
    if args.dry_run:
        for v in exp.variants:
            print(f"{v.name}: build {v.build_key}  overrides {v.overrides}")
        print(f"{len(exp.variants)} variants x {len(exp.seeds)} seeds")
        return 0
    from trainer.experiment.report import write_results
    from trainer.experiment.runner import run_experiment

    results = run_experiment(exp, args.out, executor=args.executor, gpus_per_run=args.gpus_per_run,
                             report_only=args.report_only)
    paths = write_results(exp, results, Path(args.out))
    print(paths["summary_md"].read_text(encoding="utf-8"))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    if args.report_only:
        return 0
    return 1 if any("error" in r for r in results) else 0


def app(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train both stages from a YAML config, then export a SentenceTransformer model")
    r.add_argument("config")
    r.add_argument("--output-dir", default=None)
    r.add_argument("--restart", action="store_true", help="ignore checkpoints in the output folder")
    r.set_defaults(func=_run)
    p = sub.add_parser("inspect", help="what the trainer sees in a shard folder: records per kind and dataset")
    p.add_argument("shards", help="output folder of `datakit build`")
    p.set_defaults(func=_inspect)
    e = sub.add_parser("eval", help="score models on a task file (offline) or MTEB tasks; or compare results folders")
    e.add_argument("models", nargs="*", metavar="MODEL",
                   help="exported trainer folder, SentenceTransformer folder or hub id, embedded-minilm, embedded-smollm2")
    e.add_argument("--tasks", help="a task file (YAML, the recipe's source syntax)")
    e.add_argument("--mteb", metavar="BENCHMARK", help='an mteb benchmark, e.g. "MTEB(eng, v2)" (needs the hub)')
    e.add_argument("--cmteb", action="store_true", help='the CMTEB benchmark ("MTEB(cmn, v1)")')
    e.add_argument("--mteb-tasks", metavar="A,B", help="mteb task names, e.g. STSBenchmark,SciFact")
    e.add_argument("--task-instructions", action="store_true",
                   help="mteb tasks: use each task's own prompt as its instruction")
    e.add_argument("--out", help="results folder (eval), or the comparison's folder (--compare)")
    e.add_argument("--compare", nargs="+", metavar="RESULTS_DIR", help="compare results folders side by side")
    e.add_argument("--name", help="the model's name in the results (org/name; default from the MODEL)")
    e.add_argument("--batch-size", type=int, default=None)
    e.add_argument("--max-length", type=int, default=None, help="tokens per text (default: the model's)")
    e.add_argument("--device", default=None)
    e.add_argument("--save-predictions", action="store_true", help="keep mteb's predictions and TREC run files")
    e.add_argument("--resume", action="store_true", help="skip tasks already in the results folder")
    e.set_defaults(func=_eval)
    x = sub.add_parser("experiment", help="build, train and score a grid of recipe/training variants over seeds")
    x.add_argument("experiment", help="an experiment file (YAML)")
    x.add_argument("--out", required=True, help="workspace: builds/, runs/ (reused across experiments), results")
    x.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="ray: one Ray task per (variant, seed) run; builds run first on the driver")
    x.add_argument("--gpus-per-run", type=float, default=0.0, help="Ray GPU resources per run")
    x.add_argument("--dry-run", action="store_true", help="resolve and check the variants, run nothing")
    x.add_argument("--report-only", action="store_true",
                   help="write the results of the runs finished so far, run nothing (while another process runs)")
    x.set_defaults(func=_experiment)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
