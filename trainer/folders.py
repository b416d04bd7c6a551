"""The folders the trainer writes (a run's output_dir, an eval's --out, an experiment's workspace, a
comparison): each is claimed before anything is written (embedkit.outfolder): new, empty, or made by the same
command; never a folder that holds files the trainer did not write."""
from __future__ import annotations

import re
from pathlib import Path

from embedkit.outfolder import claim

RUN_NAMES = {"log.jsonl", "model", "best", "eval", "tensorboard", "run_config.json", "wandb"}
EVAL_NAMES = {"results", "predictions", "eval-status.json"}
EXPERIMENT_NAMES = {"builds", "runs"}
EXPERIMENT_REPORT = {"results.csv", "summary.md", "summary.csv", "plots.png", "index.html"}
COMPARISON_NAMES = {"comparison.md", "comparison.csv", "comparison.png"}
_STAGE = re.compile(r"stage\d+$")


def _tmp(path: Path) -> bool:
    return path.name.endswith(".tmp")


def claim_run(folder: str | Path) -> Path:
    """A training run's output folder."""
    def known(p: Path) -> bool:
        return p.name in RUN_NAMES or bool(_STAGE.match(p.name)) or _tmp(p)

    def looks_ours(f: Path) -> bool:
        return (f / "log.jsonl").is_file() or any(_STAGE.match(p.name) and p.is_dir() for p in f.iterdir())

    return claim(folder, "trainer run", known, looks_ours, flag="output_dir (--out)",
                 hint="give the run a new or empty folder")


def claim_eval(folder: str | Path) -> Path:
    """`trainer eval --out`: mteb's results layout and our summaries."""
    def known(p: Path) -> bool:
        return p.name in EVAL_NAMES or (p.name.startswith("summary-") and p.suffix in (".md", ".csv")) or _tmp(p)

    return claim(folder, "trainer eval", known, lambda f: (f / "results").is_dir())


def claim_experiment(folder: str | Path) -> Path:
    """`trainer experiment --out`: builds/ and runs/ (shared by every experiment run there) and one report
    folder per experiment."""
    def known(p: Path) -> bool:
        if p.name in EXPERIMENT_NAMES:
            return True
        return p.is_dir() and not p.is_symlink() and all(c.name in EXPERIMENT_REPORT for c in p.iterdir())

    return claim(folder, "trainer experiment", known, lambda f: (f / "runs").is_dir() or (f / "builds").is_dir())


def claim_comparison(folder: str | Path) -> Path:
    """`trainer eval --compare --out`."""
    return claim(folder, "trainer comparison", lambda p: p.name in COMPARISON_NAMES,
                 lambda f: (f / "comparison.md").is_file())
