"""Recipe model and YAML loading: validated with pydantic, errors name the key and its line."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from datakit.sources import CsvOptions, HFSource, Sandbox, SourceFields, SourceLocation  # noqa: F401 - re-exported
from embedkit.configfile import ConfigError, Strict, format_errors, line_of, parse_yaml, read_text

AdapterName = Literal[
    "title_body", "qa", "reading_comprehension", "retrieval", "nli", "sts", "classification", "clustering"
]


class RecipeError(ConfigError):
    """The recipe file is not valid; the message names the key (and line) at fault."""


class SourceConfig(SourceLocation):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.\-]+$", description="becomes the records' `dataset`")
    adapter: AdapterName
    options: dict[str, Any] = {}
    instruction: str = ""
    max_quarantine: float = Field(0.5, ge=0.0, le=1.0,
                                  description="share of rows that may be quarantined before the build fails")


class OutputConfig(Strict):
    shard_rows: int = Field(50_000, gt=0)
    compression: Literal["none", "lz4", "zstd"] = "none"


class LLMSettings(Strict):
    """Defaults for every synthesis step of a recipe, and the run's one spending cap."""

    model: str = Field("embedded/smollm2", description="litellm model string; embedded/smollm2 runs offline")
    api_base: str | None = Field(None, description="an OpenAI-compatible server, with model 'openai/<name>'")
    concurrency: int = Field(4, gt=0)
    rpm: int | None = Field(None, gt=0, description="requests per minute, per step")
    max_retries: int = Field(5, ge=0)
    timeout_s: float = Field(120.0, gt=0)
    max_budget_usd: float | None = Field(None, ge=0, description="stop sending requests once spent")
    price_per_million: tuple[float, float] | None = Field(
        None, description="(input, output) USD per million tokens, for models litellm has no price for")
    cache: str | None = Field(None, description="answers cache (SQLite); default $DATAKIT_CACHE/llm/answers.sqlite")
    preflight: bool = Field(True, description="send each synthesis step's model one small request before the "
                            "build reads anything: a wrong key, model or api_base fails in seconds")


class Recipe(Strict):
    name: str
    description: str = ""
    sources: list[SourceConfig] = Field(..., min_length=1)
    steps: list[dict[str, Any]] = []
    llm: LLMSettings = LLMSettings()
    output: OutputConfig = OutputConfig()
    strict: bool = False
    allow_paths: list[str] = Field([], description="files or folders outside the recipe's folder that its sources "
                                   "may read (relative to the recipe, or absolute); nothing else outside is read")

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        seen: set[str] = set()
        for s in sources:
            if s.name in seen:
                raise ValueError(f"two sources are named {s.name!r}")
            seen.add(s.name)
        return sources

    @field_validator("steps")
    @classmethod
    def _steps_have_type(cls, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, s in enumerate(steps):
            if "type" not in s:
                raise ValueError(f"step {i} has no 'type' key")
        return steps

    def sha256(self) -> str:
        """Hash of the resolved recipe (defaults filled in), stable across key order."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()


class LoadedRecipe(BaseModel):
    """A recipe plus where it was loaded from (paths in it are relative to `base_dir`)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    recipe: Recipe
    path: Path
    base_dir: Path

    @property
    def sandbox(self) -> Sandbox:
        """Where this recipe's sources may read: its folder and its allow_paths."""
        return Sandbox.of(self.base_dir, self.recipe.allow_paths)


def parse_recipe(text: str, path: Path) -> Recipe:
    """Validate recipe text; raise RecipeError listing every bad key with its line."""
    data, root = parse_yaml(text, path, RecipeError)
    return validate_recipe(data, path, root)


def validate_recipe(data: Any, path: Path, root: yaml.Node | None = None) -> Recipe:
    """Validate a recipe mapping (keys, types, adapters' options and roles, steps); errors name each bad key,
    with its line when `root` (the YAML node tree) is given."""
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping with keys name, sources, steps, output")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError("\n".join(format_errors(exc, root, (), path))) from None

    from datakit.adapters import adapter_class  # late: adapters import this module
    from datakit.steps import step_config

    errors: list[str] = []
    for i, src in enumerate(recipe.sources):
        cls = adapter_class(src.adapter)
        try:
            cls.Options.model_validate(src.options)
        except ValidationError as exc:
            errors += format_errors(exc, root, ("sources", i, "options"), path)
        for role in src.columns:
            if role not in cls.roles:
                line = line_of(root, ("sources", i, "columns", role))
                errors.append(
                    f"{path}:{line}: sources[{i}].columns.{role}: adapter {src.adapter!r} has no role {role!r} "
                    f"(roles: {', '.join(cls.roles)})"
                )
    for i, step in enumerate(recipe.steps):
        try:
            step_config(step)
        except ValidationError as exc:
            errors += format_errors(exc, root, ("steps", i), path)
        except KeyError as exc:
            line = line_of(root, ("steps", i, "type"))
            errors.append(f"{path}:{line}: steps[{i}].type: {exc.args[0]}")
    if errors:
        raise RecipeError("\n".join(errors).replace(f"{path}:None:", f"{path}:"))
    return recipe


def load_recipe(path: str | Path) -> LoadedRecipe:
    path = Path(path)
    text = read_text(path, "recipe", RecipeError)
    return LoadedRecipe(recipe=parse_recipe(text, path), path=path, base_dir=path.resolve().parent)
