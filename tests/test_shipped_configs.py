"""The shipped training configs run (a smoke test at a few steps; the full runs are benchmarks): every
`recipes/*/train*.yaml` trains its model on the demo corpus with its own settings, stages shortened."""
from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import load_config
from tests.conftest import ROOT

CONFIGS = sorted(p for p in (ROOT / "recipes").glob("*/train*.yaml") if "out" not in p.parts)


def _offline(path: Path) -> bool:
    """The config's model is here without the hub (an embedded alias or a folder); the GPU-scale configs that
    name hub models are validated by tests/test_recipe.py, not trained."""
    from embedkit.models import MINILM_NAMES, SMOLLM2

    name = load_config(path).model.name_or_path
    return name in (*MINILM_NAMES, SMOLLM2) or (path.parent / name).exists() or Path(name).is_absolute()


def _setting(path: Path) -> str:
    """A config less its schedule (each stage's steps, lr and warmup) and logging: two configs with one setting
    train the same code path, so the smoke test trains one of them (each load of SmolLM2 costs ~30 s here)."""
    cfg = load_config(path).model_dump(exclude={"output_dir", "log_every", "eval"})
    cfg["stages"] = len(cfg["stages"])
    return repr(cfg)


def _one_per_setting(paths: list[Path]) -> list[Path]:
    seen: dict[str, Path] = {}
    for path in sorted(paths, key=lambda p: (p.parent.name, len(p.name), p.name)):  # train.yaml before its variants
        seen.setdefault(_setting(path), path)
    return list(seen.values())


SMOKE = _one_per_setting([p for p in CONFIGS if _offline(p)])


def test_the_smoke_test_leaves_out_only_configs_it_trains_the_setting_of():
    """recipes/smollm2/train-quick.yaml is train.yaml at a third of the steps: one of the two is trained."""
    offline = [p for p in CONFIGS if _offline(p)]
    assert {_setting(p) for p in offline} == {_setting(p) for p in SMOKE}
    assert len(SMOKE) < len(offline)  # else this test and _setting are dead weight: drop them
    assert _setting(ROOT / "recipes/smollm2/train.yaml") != _setting(ROOT / "recipes/minilm/train.yaml")


@pytest.mark.parametrize("path", SMOKE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_shipped_training_config_trains_on_any_corpus(path: Path, demo_cli, tmp_path):
    """Two steps a stage at batch 4 (the model, lengths, losses, pooling and prompts are the config's own)."""
    from trainer.train import train

    cfg = load_config(path)
    cfg.data.shards, cfg.output_dir = str(demo_cli), str(tmp_path / "run")
    cfg.data.batch_size = min(cfg.data.batch_size, 4)
    cfg.data.pair_batch_size = min(cfg.data.pair_batch_size or 4, 4)
    for stage in cfg.stages:
        stage.steps = min(stage.steps, 2)
        stage.warmup_steps = min(stage.warmup_steps, 1)
    cfg.eval = None
    model = train(cfg, resume=False, log=lambda _: None)
    assert (model / "config_sentence_transformers.json").exists()
    log = (tmp_path / "run" / "log.jsonl").read_text()
    assert '"step": 2' in log


def test_the_shipped_configs_are_the_ones_results_names():
    """recipes/smollm2 and recipes/minilm hold the configs issue #42 asked for."""
    names = {f"{p.parent.name}/{p.name}" for p in CONFIGS}
    assert {"smollm2/train.yaml", "minilm/train.yaml"} <= names
    smol = load_config(ROOT / "recipes" / "smollm2" / "train.yaml")
    assert smol.model.name_or_path == "embedded-smollm2" and smol.model.pooling == "mean"
    assert smol.model.bidirectional is None  # decoders default to bidirectional
    assert [s.steps > 0 for s in smol.stages] == [True, True] and smol.data.eta == 0.72


TRAINING_CONFIGS = CONFIGS + [p for p in sorted((ROOT / "trainer" / "configs").glob("*.yaml"))
                              if p.read_text().startswith("model:") or "\nmodel:" in p.read_text()]  # not accelerate's


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_report_reads_a_training_config_as_the_trainer_does(path: Path):
    """datakit's report reads only a training config's model, prompt and lengths (`embedkit.lengths`, so that
    datakit never imports the trainer): on every shipped config it reads what the trainer's own config reads."""
    from embedkit.lengths import read_train_lengths

    ours, theirs = read_train_lengths(path), load_config(path)
    assert (ours.model.name_or_path, ours.model.gguf_file) == (theirs.model.name_or_path, theirs.model.gguf_file)
    assert ours.data.model_dump() == {k: getattr(theirs.data, k) for k in ours.data.model_dump()}
    assert ours.output_dir == theirs.output_dir
