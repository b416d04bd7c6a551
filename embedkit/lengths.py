"""How the trainer sees a text, and what datakit reads of a training config.

The prompt template and the max lengths are shared by the trainer's config (`trainer.config`, which owns the
training config) and datakit's audit report, which measures token lengths the way a training run will cut them.
The report reads only these keys of a training config file (`read_train_lengths`: every other key is the
trainer's business and ignored here), so datakit never imports the trainer. Pure pydantic: no torch.
"""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from embedkit.configfile import ConfigError, load_yaml, validate

DEFAULT_QUERY_TEMPLATE = "Instruct: {instruction}\nQuery: "  # the report's prompt; task files and eval share it
QUERY_MAX_LENGTH = 256
DOC_MAX_LENGTH = 1536


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class _Model(_Lenient):
    name_or_path: str = Field(..., min_length=1)
    gguf_file: str | None = None


class _Data(_Lenient):
    query_max_length: int = Field(QUERY_MAX_LENGTH, ge=1)
    doc_max_length: int = Field(DOC_MAX_LENGTH, ge=1)
    query_template: str = DEFAULT_QUERY_TEMPLATE
    symmetric_instruction: bool = True


class TrainLengths(_Lenient):
    """The keys of a training config that decide how its texts are tokenized, and where its model is written."""

    model: _Model
    data: _Data = Field(default_factory=_Data)
    output_dir: str | None = None


def read_train_lengths(path: str | Path) -> TrainLengths:
    """A training config file's model, prompt and lengths; paths resolved against the file's folder as the
    trainer resolves them. ConfigError naming the file, line and key when these keys are wrong."""
    path = Path(path)
    raw, root = load_yaml(path, "training config", ConfigError)
    cfg = validate(TrainLengths, raw, path, root, "training config", ConfigError)
    base = path.resolve().parent
    if cfg.output_dir and not Path(cfg.output_dir).is_absolute():
        cfg.output_dir = os.path.normpath(base / cfg.output_dir)
    name = cfg.model.name_or_path
    if not Path(name).is_absolute() and (base / name).exists():
        cfg.model.name_or_path = str(base / name)
    return cfg
