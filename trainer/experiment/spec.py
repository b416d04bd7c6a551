"""Experiment files: a base recipe, training config and eval task file, and variants that override keys.

```yaml
recipe: ../demo.yaml                  # paths relative to this file
train: ../train-demo.yaml             # its data.shards and output_dir are set per run; its eval: is dropped
eval: ../eval-demo.yaml               # a `trainer eval` task file, scored after training
seeds: [0, 1, 2]                      # each variant is trained once per seed (training and data order)
base: base                            # the variant the others are compared with (default: base)
variants:
  base: {}
  no_query_negatives: {train: {query_negatives: false}}
  eta_0.9: {train: {data.eta: 0.9}}
  no_paraphrase: {recipe: {steps.paraphrase: null}}
grid: {train: {data.eta: [0.5, 0.72, 0.9]}}   # the cross product, added as variants named "data.eta=0.5", ...
```

Override paths are dotted. In a training config: any key (`data.eta`, `tau`, `stages.0.steps`,
`model.name_or_path`). In a recipe: `steps.<type>` is the first step of that type, `steps.<type>#2` the second
(the manifest's naming), `steps.<n>` the n-th (0-based); `sources.<name>` a source by name; then any key
below (`steps.mine_negatives.depth`, `sources.wikiqa.limit`, `llm.model`). `null` removes a step, a source or
a key (a removed key takes its default). A path that does not exist is an error naming it before anything runs.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from datakit.recipe import LoadedRecipe
from embedkit.configfile import ConfigError, Strict, load_yaml, validate
from trainer.config import TrainConfig


class ExperimentError(ConfigError):
    """The experiment file, or a variant's override, is not valid."""


class VariantSpec(Strict):
    recipe: dict[str, Any] = {}
    train: dict[str, Any] = {}


class ExperimentSpec(Strict):
    recipe: str
    train: str
    eval: str
    seeds: list[int] = Field([0], min_length=1)
    base: str = "base"
    variants: dict[str, VariantSpec] = {"base": VariantSpec()}
    grid: VariantSpec | None = None  # each key: a list of values; the cross product becomes variants
    description: str = ""

    @field_validator("variants")
    @classmethod
    def _names(cls, variants: dict[str, VariantSpec]) -> dict[str, VariantSpec]:
        for name in variants:
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"variant name {name!r}: use letters, digits and ._=-")
        return variants


@dataclass
class Variant:
    """One variant, resolved once: its raw documents (what run keys hash) and the typed objects runs use."""

    name: str
    overrides: dict[str, dict[str, Any]]
    recipe: dict[str, Any]
    train: dict[str, Any]
    loaded: LoadedRecipe
    config: TrainConfig
    recipe_sha: str = ""
    build_key: str = ""


@dataclass
class Experiment:
    name: str
    path: Path
    spec: ExperimentSpec
    recipe_path: Path
    train_path: Path
    eval_path: Path
    variants: list[Variant] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return self.spec.seeds


# ------------------------------------------------------------------ overrides
def _find_item(items: list, parts: list[str], i: int) -> tuple[int, int]:
    """(list index, parts consumed) of the item `parts[i:]` names in a list of steps or sources."""
    head = parts[i]
    if head.isdigit():
        if int(head) >= len(items):
            raise KeyError(f"index {head} out of range ({len(items)} items)")
        return int(head), 1
    if all(isinstance(x, dict) and "type" in x for x in items) and items:
        kind, _, nth = head.partition("#")
        hits = [k for k, x in enumerate(items) if x["type"] == kind]
        n = int(nth) if nth.isdigit() else 1
        if len(hits) < n:
            have = ", ".join(x["type"] for x in items)
            raise KeyError(f"no such step (steps: {have})")
        return hits[n - 1], 1
    names = [x.get("name") if isinstance(x, dict) else None for x in items]
    for j in range(len(parts), i, -1):  # the longest dotted prefix that is a name (names may hold dots)
        name = ".".join(parts[i:j])
        if name in names:
            return names.index(name), j - i
    raise KeyError(f"no such item (names: {', '.join(str(n) for n in names)})")


def apply_override(doc: dict[str, Any], path: str, value: Any, deletions: list) -> None:
    """Set `path` in `doc` to `value` (None removes; list removals are queued in `deletions`)."""
    parts = path.split(".")
    node: Any = doc
    trail = ""
    i = 0
    while True:
        if isinstance(node, dict):
            key, used = parts[i], 1
            last = i + used == len(parts)
            if not last and key not in node:
                raise KeyError(f"no key {key!r}" + (f" under {trail!r}" if trail else ""))
        elif isinstance(node, list):
            key, used = _find_item(node, parts, i)
            last = i + used == len(parts)
        else:
            raise KeyError(f"{trail!r} is a {type(node).__name__}, not a mapping or list")
        if last:
            break
        trail = ".".join(parts[: i + used])
        node = node[key]
        i += used
    if value is None:
        if isinstance(node, list):
            deletions.append((node, key))
        else:
            node.pop(key, None)
    elif isinstance(node, list) and isinstance(node[key], dict) and "type" in node[key] and isinstance(value, dict):
        node[key] = {"type": node[key]["type"], **value}  # a step's parameters replaced, its type kept
    else:
        node[key] = value


def resolve(base: dict[str, Any], overrides: dict[str, Any], what: str, variant: str) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    deletions: list = []
    for path, value in overrides.items():
        try:
            apply_override(doc, path, copy.deepcopy(value), deletions)
        except KeyError as exc:
            raise ExperimentError(f"variant {variant!r}: {what} override {path!r}: {exc.args[0]}") from None
    for lst, idx in sorted(deletions, key=lambda d: -d[1]):
        del lst[idx]
    return doc


# ------------------------------------------------------------------ loading
def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    data, _ = load_yaml(path, what, ExperimentError)
    if not isinstance(data, dict):
        raise ExperimentError(f"{path}: a {what} is a mapping")
    return data


def _grid_variants(grid: VariantSpec | None) -> dict[str, VariantSpec]:
    if grid is None:
        return {}
    axes = [("recipe", k, v) for k, v in grid.recipe.items()] + [("train", k, v) for k, v in grid.train.items()]
    for _, k, v in axes:
        if not isinstance(v, list) or not v:
            raise ExperimentError(f"grid: {k}: give a non-empty list of values")
    out = {}
    for combo in itertools.product(*[[(side, k, x) for x in v] for side, k, v in axes]):
        name = ",".join(f"{k}={json.dumps(x) if not isinstance(x, (int, float, str)) else x}" for _, k, x in combo)
        spec = VariantSpec()
        for side, k, x in combo:
            getattr(spec, side)[k] = x
        out[name] = spec
    return out


def load_experiment(path: str | Path) -> Experiment:
    """Read and check an experiment: every variant's recipe and training config resolve and validate, once."""
    from datakit.recipe import RecipeError, validate_recipe
    from trainer.config import TrainConfigError, parse_config

    path = Path(path)
    raw, root = load_yaml(path, "experiment file", ExperimentError)
    spec = validate(ExperimentSpec, raw, path, root, "experiment file", ExperimentError)
    base_dir = path.resolve().parent
    exp = Experiment(path.stem, path, spec, base_dir / spec.recipe, base_dir / spec.train, base_dir / spec.eval)
    if not exp.eval_path.exists():
        raise ExperimentError(f"{path}: eval: no task file {exp.eval_path}")
    recipe, train = _read_yaml(exp.recipe_path, "recipe"), _read_yaml(exp.train_path, "training config")
    train.pop("eval", None)  # runs are scored after training, on the experiment's task file
    variants = {**spec.variants, **_grid_variants(spec.grid)}
    if spec.base not in variants:
        raise ExperimentError(f"{path}: base: no variant {spec.base!r} (variants: {', '.join(variants)})")
    recipe_dir = exp.recipe_path.resolve().parent
    for name, v in variants.items():
        r = resolve(recipe, v.recipe, "recipe", name)
        t = resolve(train, v.train, "train", name)
        try:
            loaded = LoadedRecipe(recipe=validate_recipe(r, exp.recipe_path), path=exp.recipe_path,
                                  base_dir=recipe_dir)
        except RecipeError as exc:
            raise ExperimentError(f"variant {name!r}: the recipe does not validate:\n{exc}") from None
        try:
            config = parse_config(t, exp.train_path)
        except TrainConfigError as exc:
            raise ExperimentError(f"variant {name!r}: the training config does not validate:\n{exc}") from None
        sha = loaded.recipe.sha256()
        exp.variants.append(Variant(name, {"recipe": v.recipe, "train": v.train}, r, t, loaded, config, sha,
                                    _build_key(sha, exp.recipe_path)))
    return exp


def _build_key(recipe_sha: str, recipe_path: Path) -> str:
    """Builds are shared by variants whose resolved recipe (and recipe folder, for relative paths) are equal."""
    return hashlib.sha256(f"{recipe_sha}:{recipe_path.resolve().parent}".encode()).hexdigest()[:16]


def corpus_digest(build: Path) -> str | None:
    """The content of a built corpus: a digest of its shards' sha256 (from its manifest); None before it is built.
    Two builds with equal records have equal digests, whatever their recipe's path or their build time."""
    from datakit.manifest import load

    try:
        shards = load(build).shards
    except (OSError, ValueError):
        return None
    return hashlib.sha256(json.dumps(sorted(s.sha256 for s in shards)).encode()).hexdigest()[:16]


def eval_digest(eval_path: Path) -> str:
    """The task file's bytes and the content (xxh3_128) of every data file its tasks read."""
    from datakit.sources import file_digest, input_files
    from trainer.eval.taskfile import load_task_file

    h = hashlib.sha256(eval_path.read_bytes())
    task_file = load_task_file(eval_path)
    for task in task_file.tasks:
        for part, src in task.sources().items():
            if src.path is not None:
                for f in input_files(src.path, task_file.sandbox).files:
                    h.update(f"{task.name}:{part}:{f.name}:{file_digest(f)}".encode())
            elif src.hf is not None:
                h.update(src.hf.model_dump_json().encode())
    return h.hexdigest()[:16]


def code_versions() -> dict[str, str]:
    """The code a run's result depends on: embedkit (its git commit in a checkout) and the libraries that train
    and score."""
    import importlib.metadata as md
    import subprocess

    out = {}
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    out["embedkit"] = (commit + ("+dirty" if dirty else "")) if commit else md.version("embedkit")
    for name in ("torch", "transformers", "sentence-transformers", "mteb"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def run_parts(variant: Variant | None, seed: int, train: dict[str, Any], train_dir: Path, corpus: str | None,
              evals: str, versions: dict[str, str]) -> dict[str, Any]:
    """Everything that decides a run's result: the corpus's content, the training config, the seed, the task
    file and its data, the code. `result.json` records it; its hash is the run's key."""
    return {"corpus": corpus, "train": train, "seed": seed, "train_dir": str(train_dir.resolve()), "eval": evals,
            "versions": versions, **({"build": variant.build_key} if variant is not None and corpus is None else {})}


def key_of(parts: dict[str, Any], prefix: str = "") -> str:
    return prefix + hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
