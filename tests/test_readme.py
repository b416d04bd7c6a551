"""The README's YAML examples are what the loaders accept: each block is validated by the model it documents
(recipe, `llm:` section, source `allow_paths`, bench spec, eval task file, training `eval:` section, experiment
file), so an example that drifts from the code fails here. Commands of the quick tour run in tests/test_cli.py."""
from __future__ import annotations

import re

import pytest
import yaml

from tests.conftest import ROOT

BLOCKS = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)


def _model_for(data: dict):
    from datakit.benchspec import BenchSpec
    from datakit.llm.settings import LLMSettings
    from datakit.recipe import Recipe
    from embedkit.trainconfig import TrainConfig
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
