"""The README is true: its YAML examples are what the loaders accept (each block validated by the model it
documents: recipe, `llm:` section, source `allow_paths`, bench spec, eval task file, training `eval:` section,
experiment file), and its shell blocks marked `<!-- docs-check: run -->` run as written (the quick tour, the
worked path from a raw file to a score) on a copy of `recipes/`. Every other shell block says which test runs its
commands, or why none can; a block with neither fails here."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```yaml\n(.*?)```", README, re.S)
SHELL = re.findall(r"(?:<!-- docs-check: (.*?) -->\n)?```bash\n(.*?)```", README, re.S)  # (marker, commands)


def _model_for(data: dict):
    from datakit.engines.benchspec import BenchSpec
    from datakit.llm.settings import LLMSettings
    from datakit.recipe import Recipe
    from trainer.config import TrainConfig
    from trainer.eval.taskfile import TaskFile
    from trainer.experiment.spec import ExperimentSpec

    if "sources" in data:
        return Recipe, data
    if set(data) == {"llm"}:
        return LLMSettings, data["llm"]
    if set(data) == {"allow_paths"}:
        return None, data
    if "tasks" in data:
        is_bench = all("type" not in t for t in data["tasks"])
        return (BenchSpec if is_bench else TaskFile), data
    if set(data) == {"eval"}:
        return TrainConfig.model_fields["eval"].annotation, data["eval"]
    if "variants" in data:
        return ExperimentSpec, data
    raise AssertionError(f"a README YAML block no test knows: keys {sorted(data)}")


def test_the_readme_has_its_yaml_examples():
    assert len(BLOCKS) >= 7


@pytest.mark.parametrize("block", BLOCKS, ids=[b.split("\n")[0][:40] for b in BLOCKS])
def test_each_readme_yaml_example_is_accepted(block):
    data = yaml.safe_load(block)
    model, part = _model_for(data)
    if model is None:
        assert isinstance(part["allow_paths"], list)
        return
    if hasattr(model, "__args__"):  # Optional[EvalSection]
        model = next(a for a in model.__args__ if a is not type(None))
    model.model_validate(part)


def test_every_shell_block_is_run_or_says_why_not():
    assert len(SHELL) >= 8 and sum(marker == "run" for marker, _ in SHELL) >= 2
    for marker, block in SHELL:
        first = block.splitlines()[0]
        assert marker, f"README shell block without a docs-check marker: {first!r}"
        assert marker == "run" or re.match(r"skip: \S.{10,}", marker), f"{first!r}: marker {marker!r}"


def test_the_readme_commands_marked_run_run_as_written(tmp_path):
    """The quick tour, then the worked path, in one working folder: `.venv/bin/...` is this test's environment,
    `recipes/` a copy (nothing is written into the repository)."""
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes", ignore=shutil.ignore_patterns("out"))
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    env = {**os.environ, "COLUMNS": "200", "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    outputs = []
    for marker, block in SHELL:
        if marker != "run":
            continue
        res = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=900)
        assert res.returncode == 0, f"README block {block.splitlines()[0]!r} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        outputs.append(res.stdout)
    tour, walk = outputs[0], outputs[-1]
    assert (tmp_path / "out" / "dedup" / "dedup.json").is_file() and (tmp_path / "out" / "demo" / "report.html").is_file()
    assert "ok:" in tour  # datakit verify
    # the worked path: the leaked TEST pair is dropped, both models scored, each with the prompts it fits
    assert re.search(r"\b64\b", walk) and "contaminated 2" in walk
    assert "no prompts: the model declares no prompt convention; 1 task instruction(s) not applied" in walk
    assert "task instructions in the model's declared template" in walk
    scores = [float(v) for v in re.findall(r"\| Pairs-test \| STS \| cosine_spearman \| ([0-9.]+) \|", walk)]
    assert len(scores) == 2 and scores[1] > scores[0]  # trained on the TRAIN rows, better on the TEST rows
