"""The training config (`trainer run CONFIG`): typed, checked at load (before any model loads), with errors naming
file, line and key.

The trainer owns it; datakit's audit report reads only the prompt and max lengths of a config file through
`embedkit.lengths` (which this config takes its defaults from, so the two agree). Torch-free on purpose: config
checks run without loading a model. Every value must already have its type (`tau: "0.02"` is an error, not a
crash mid-run) and lie in its range (lr > 0, steps >= 0 with some stage >= 1, tau > 0, 0 <= eta <= 1, ...).
Relative paths are relative to the config file.

`data.shards` and `output_dir` may be left out of a file and given at run time (`trainer run CONFIG --shards
OUT --out RUN`, or by `trainer experiment` per run).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator

from embedkit.configfile import ConfigError, StrictTyped, load_yaml, validate
from embedkit.lengths import DEFAULT_QUERY_TEMPLATE, DOC_MAX_LENGTH, QUERY_MAX_LENGTH
from embedkit.models import resolve_name  # noqa: F401  (the one alias resolver; re-exported for callers)
# transformers' schedulers that need nothing but the warm-up and the stage's steps
SCHEDULES = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial",
             "inverse_sqrt")
Schedule = Literal["cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial",
                   "inverse_sqrt"]
Pooling = Literal["mean", "last", "cls"]


class TrainConfigError(ConfigError):
    """The training config is not valid; the message names the file, line and key at fault."""


class ModelConfig(StrictTyped):
    name_or_path: str = Field(..., min_length=1, description="a folder, a hub id, embedded-minilm or embedded-smollm2")
    gguf_file: str | None = Field(None, description="load weights from this GGUF file in `name_or_path`")
    pooling: Pooling = "mean"
    bidirectional: bool | None = Field(None, description="default: True for decoders")
    attn_implementation: str = Field("sdpa", description='"sdpa", "eager", or "flash_attention_2" when installed')
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: float32 weights for training (bf16 autocast on GPU); bfloat16 on GPU for inference")
    gradient_checkpointing: bool = False
    lora: dict[str, Any] | None = Field(None, description="peft LoraConfig arguments, e.g. {r: 16, lora_alpha: 32}")
    dropout: float | None = Field(None, ge=0.0, lt=1.0, description="every dropout of the backbone (None: its own)")
    padding_free: bool = Field(True, description="training steps without padding (trainer/packing.py)")
    # packed texts with variable-length attention (decoders, trainer/varlen.py). None: on CUDA, when a probe at
    # load gives the padded path's embeddings; elsewhere length-grouped micro-batches. True forces it (on the
    # CPU the attention then runs text by text: for tests). False: micro-batches.
    varlen: bool | None = None
    tokenizer: str | None = Field(None, description="a tokenizer folder or hub id other than name_or_path's own")
    pad_token: str | None = Field(None, description="the padding token when the tokenizer has none (default: its "
                                  "eos token, else its unk token)")
    padding_side: Literal["left", "right"] | None = Field(
        None, description="default: the tokenizer's own; left only for rotary-position decoders")


class DataConfig(StrictTyped):
    shards: str | None = Field(None, description="a datakit output folder (or given at run time)")
    batch_size: int = Field(32, ge=1, description="InfoNCE batch (retrieval, classification) per process and step")
    pair_batch_size: int | None = Field(None, ge=1, description="CoSENT batch (the report: 768); default batch_size")
    negatives: int = Field(4, ge=0, description="hard negatives per query")
    query_max_length: int = Field(QUERY_MAX_LENGTH, ge=1)
    doc_max_length: int = Field(DOC_MAX_LENGTH, ge=1)
    eta: float = Field(0.72, ge=0.0, le=1.0, description="stage 2: share of batches from retrieval data")
    temperature: float = Field(1.0, gt=0.0, description="dataset weights are size ** (1 / temperature)")
    length_grouping: bool = True
    group_batches: int = Field(32, ge=1, description="length grouping window, in batches")
    query_template: str = DEFAULT_QUERY_TEMPLATE
    symmetric_instruction: bool = Field(True, description="pairs and classification: the instruction on both sides")
    seed: int = 0

    @field_validator("query_template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            value.format(instruction="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"a template with {{instruction}} as its only field, e.g. {DEFAULT_QUERY_TEMPLATE!r} "
                             f"({type(exc).__name__}: {exc})") from None
        return value


class StageConfig(StrictTyped):
    steps: int = Field(..., ge=0, description="0 skips the stage (e.g. stage 1, to train all tasks from step 1)")
    lr: float = Field(..., gt=0.0)
    warmup_steps: int = Field(300, ge=0)
    schedule: Schedule = "cosine"


class KeepBest(StrictTyped):
    task: str
    metric: str | None = Field(None, description="default: the task's main score")


class EvalSettings(StrictTyped):
    """The `eval:` section: score the live model on a task file during training (trainer/eval/training.py)."""

    tasks: str = Field(..., description="a `trainer eval` task file, relative to the config")
    every: int = Field(0, ge=0, description="steps; 0: only before training and at the end of each stage")
    at_start: bool = True
    keep_best: KeepBest | None = None
    batch_size: int = Field(32, ge=1)
    max_length: int | None = Field(None, ge=1, description="default: the training config's doc_max_length")


def _default_stages() -> list[StageConfig]:
    return [StageConfig(steps=32_000, lr=3e-5), StageConfig(steps=8_000, lr=2e-5)]


class TrainConfig(StrictTyped):
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    output_dir: str | None = Field(None, description="the run's folder (or given at run time: --out)")
    stages: list[StageConfig] = Field(default_factory=_default_stages, min_length=1)
    tau: float = Field(0.02, gt=0.0)
    cosent_scale: float = Field(50.0, gt=0.0, description="1 / tau, as the report implies; sentence-transformers: 20")
    query_negatives: bool = True
    grad_cache_chunk: int = Field(0, ge=0, description="> 0: GradCache with chunks of this many texts")
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, ge=0.0, description="0: no clipping")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on a GPU that has it, else no")
    log_every: int = Field(10, ge=1)
    save_every: int = Field(0, ge=0, description="steps; 0 = only at the end of each stage")
    seed: int = 0
    eval: EvalSettings | None = None

    @field_validator("stages")
    @classmethod
    def _some_steps(cls, stages: list[StageConfig]) -> list[StageConfig]:
        if not any(s.steps for s in stages):
            raise ValueError("every stage has 0 steps: give at least one stage steps >= 1")
        return stages

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        return "no" if value is False else value  # YAML reads `no` as false

    def runnable(self) -> "TrainConfig":
        """Self, once the run-time parts are there (shards and output folder); a one-line error otherwise."""
        if not self.data.shards:
            raise TrainConfigError("data.shards: not set: give it in the config or `--shards OUT` (a datakit output)")
        if not self.output_dir:
            raise TrainConfigError("output_dir: not set: give it in the config or `--out RUN_DIR`")
        return self


def resolve_paths(cfg: TrainConfig, base_dir: Path) -> TrainConfig:
    """Paths in the config are relative to its folder (a model name that is not a folder there is left as it is:
    a hub id or an alias)."""
    def rel(p: str | None) -> str | None:
        return p if p is None or Path(p).is_absolute() else os.path.normpath(base_dir / p)

    cfg.data.shards = rel(cfg.data.shards)
    cfg.output_dir = rel(cfg.output_dir)
    if cfg.eval is not None:
        cfg.eval.tasks = rel(cfg.eval.tasks)  # type: ignore[assignment]
    name = cfg.model.name_or_path
    if not Path(name).is_absolute() and (base_dir / name).exists():
        cfg.model.name_or_path = str(base_dir / name)
    return cfg


def parse_config(raw: Any, path: Path, root: yaml.Node | None = None, base_dir: Path | None = None) -> TrainConfig:
    """A training config from its parsed YAML; errors name `path` and, with `root`, each key's line."""
    cfg = validate(TrainConfig, raw, path, root, "training config", TrainConfigError)
    return resolve_paths(cfg, base_dir if base_dir is not None else path.resolve().parent)


def load_config(path: str | Path) -> TrainConfig:
    """Read, type-check and resolve a training config file."""
    path = Path(path)
    raw, root = load_yaml(path, "training config", TrainConfigError)
    return parse_config(raw, path, root)


def check_paths(cfg: TrainConfig) -> None:
    """Fail in one line, before any model loads, on a shards folder or a model path that does not exist
    (a name that is not a path, such as a hub id `org/name` or an alias, is left to the loader)."""
    cfg.runnable()
    if not Path(cfg.data.shards).exists():  # type: ignore[arg-type]
        raise FileNotFoundError(f"data.shards: {cfg.data.shards}: no such folder (a datakit output folder)")
    for key in ("name_or_path", "tokenizer"):
        name = getattr(cfg.model, key)
        if name and (name.startswith((".", "/", "~")) or Path(name).is_absolute()) and \
                not Path(name).expanduser().exists():
            raise FileNotFoundError(f"model.{key}: {name}: no such folder (give a folder, a hub id or an alias)")
    if cfg.eval is not None and not Path(cfg.eval.tasks).exists():
        raise FileNotFoundError(f"eval.tasks: {cfg.eval.tasks}: no such task file")

