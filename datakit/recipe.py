"""Recipe model and YAML loading: validated once with pydantic into typed objects (sources, each step's config,
llm settings), errors naming the key and its line. Sits above the adapters, readers and steps it checks against."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from datakit.adapters import ADAPTERS, adapter_class
from datakit.llm.settings import LLMSettings
from datakit.sources import Sandbox, SourceError, SourceLocation
from datakit.steps import StepSpec
from embedkit.configfile import ConfigError, Strict, format_errors, line_of, parse_yaml, read_text

AdapterName = Literal[tuple(ADAPTERS)]  # the registry's names (datakit.adapters)


class RecipeError(ConfigError):
    """The recipe file is not valid; the message names the key (and line) at fault."""


class SourceConfig(SourceLocation):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.\-]+$", description="becomes the records' `dataset`")
    adapter: AdapterName
    options: dict[str, Any] = {}
    instruction: str = ""
    mteb_task: str | None = Field(None, description="this source is that MTEB task's data (e.g. its train split): "
                                  "models trained on it are not zero-shot on the task (model cards, model_meta.json)")
    max_quarantine: float = Field(0.5, ge=0.0, le=1.0,
                                  description="share of rows that may be quarantined before the build fails")


class OutputConfig(Strict):
    shard_rows: int = Field(50_000, gt=0)
    compression: Literal["none", "lz4", "zstd"] = "none"


class Recipe(Strict):
    name: str
    description: str = ""
    sources: list[SourceConfig] = Field(..., min_length=1)
    steps: list[StepSpec] = Field([], description="validated once into each step's typed config (datakit.steps)")
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


def named_paths(recipe: Recipe) -> list[tuple[str, str]]:
    """(key, path) for every file or folder a recipe names outside its sources (steps' pools, packs, benchmark
    files, prompt files, caches): the one list `check_paths` sends through the sandbox."""
    found: list[tuple[str, str]] = [("llm.cache", recipe.llm.cache)] if recipe.llm.cache else []
    for i, step in enumerate(recipe.steps):
        found += [(f"steps[{i}].{step.type}.{key}", value) for key, value in step.named_paths()]
    return found


def check_paths(loaded: LoadedRecipe) -> None:
    """Every path a recipe's keys name, resolved (symlinks followed) inside its sandbox; a RecipeError naming
    the key otherwise. Nothing outside is opened (a file's existence is not even probed)."""
    sandbox = loaded.sandbox
    errors = []
    for key, value in named_paths(loaded.recipe):
        try:
            sandbox.named(key, value)
        except SourceError as exc:
            errors.append(f"{loaded.path}: {exc}")
    if errors:
        raise RecipeError("\n".join(errors))


def encoder_max_tokens(model: str) -> int | None:
    """The max sequence length of a local sentence-transformers model folder (or alias); None when unknown."""
    from embedkit.models import resolve_name

    folder = Path(resolve_name(model)[0])
    config = folder / "sentence_bert_config.json"
    try:
        return int(json.loads(config.read_text(encoding="utf-8"))["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


WORD_TOKENS = 1.3  # sub-word tokens per English word, for a chunk size given in words


def check_chunk_sizes(loaded: LoadedRecipe) -> None:
    """A `documents` source's passages must fit the embedders that read them (the round-trip filter, mining):
    a chunk size above an embedder's max length (words counted at about 1.3 tokens) is an error naming the key."""
    encoders = [(f"steps[{i}].{s.type}.{'encoder' if s.type == 'generate_queries' else 'model'}",
                 s.encoder if s.type == "generate_queries" else s.model)
                for i, s in enumerate(loaded.recipe.steps) if s.type in ("generate_queries", "mine_negatives")]
    errors = []
    for i, src in enumerate(loaded.recipe.sources):
        if src.adapter != "documents":
            continue
        chunk = adapter_class("documents").Options.model_validate(src.options).chunk
        if chunk.by not in ("tokens", "words"):
            continue
        tokens = chunk.size if chunk.by == "tokens" else int(chunk.size * WORD_TOKENS)
        for key, model in encoders:
            limit = encoder_max_tokens(model)
            if limit is not None and tokens > limit:
                errors.append(f"{loaded.path}: sources[{i}].options.chunk.size: {chunk.size} {chunk.by}"
                              f"{f' (about {tokens} tokens)' if chunk.by == 'words' else ''} is more than {key} "
                              f"({model}) reads: {limit} tokens; passages would be cut where it embeds them")
    if errors:
        raise RecipeError("\n".join(errors))


def wide_roots(loaded: LoadedRecipe) -> list[Path]:
    """The recipe's allow_paths that open more than its own tree: the file system root, the home folder (or
    a folder holding it), or a folder holding the recipe's own folder. They need the user's consent
    (`datakit build --allow-wide-paths`)."""
    base, home = loaded.base_dir.resolve(), Path.home().resolve()
    wide = []
    for root in loaded.sandbox.allowed:
        if root == Path(root.anchor) or root == home or root in home.parents or root == base or root in base.parents:
            wide.append(root)
    return wide


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
        raise RecipeError("\n".join(format_errors(exc, root, (), path, data))) from None
    errors: list[str] = []
    for i, src in enumerate(recipe.sources):
        cls = adapter_class(src.adapter)
        try:
            cls.Options.model_validate(src.options)
        except ValidationError as exc:
            errors += format_errors(exc, root, ("sources", i, "options"), path, src.options)
        for role in src.columns:
            if role not in cls.roles:
                line = line_of(root, ("sources", i, "columns", role))
                errors.append(
                    f"{path}:{line}: sources[{i}].columns.{role}: adapter {src.adapter!r} has no role {role!r} "
                    f"(roles: {', '.join(cls.roles)})"
                )
    if errors:
        raise RecipeError("\n".join(errors).replace(f"{path}:None:", f"{path}:"))
    return recipe


def load_recipe(path: str | Path) -> LoadedRecipe:
    path = Path(path)
    text = read_text(path, "recipe", RecipeError)
    loaded = LoadedRecipe(recipe=parse_recipe(text, path), path=path, base_dir=path.resolve().parent)
    check_paths(loaded)
    check_chunk_sizes(loaded)
    return loaded
