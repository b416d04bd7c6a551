"""Versioned prompt files (`<id>.v<version>.yaml` in this folder, or any path a recipe names).

A prompt file holds chat `messages` with `{{field}}` placeholders and its `output`: `text`, or a mapping of
JSON field names to types (`string`, `boolean`, `number`). `Prompt.ref` (`id@version`) goes into each
record's lineage; `Prompt.cache_version` adds a hash of the file, so an edited prompt never reuses old answers.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, create_model

from embedkit.configfile import parse_yaml, read_text

HERE = Path(__file__).parent
_TYPES = {"string": str, "boolean": bool, "number": float, "integer": int}
_FIELD = re.compile(r"\{\{(\w+)\}\}")


class PromptError(ValueError):
    pass


@dataclass(frozen=True)
class Prompt:
    id: str
    version: int
    messages: list[dict[str, str]]
    output: str | dict[str, str]
    sha: str
    path: Path

    @property
    def ref(self) -> str:
        return f"{self.id}@{self.version}"

    @property
    def cache_version(self) -> str:
        return f"{self.ref}:{self.sha[:12]}"

    @property
    def fields(self) -> set[str]:
        return {m for msg in self.messages for m in _FIELD.findall(msg["content"])}

    def schema(self) -> type[BaseModel] | None:
        """A pydantic model of the JSON answer, or None for plain text answers."""
        if self.output == "text":
            return None
        fields: dict[str, Any] = {name: (_TYPES[kind], ...) for name, kind in self.output.items()}
        return create_model(f"{self.id.title().replace('_', '')}Answer", **fields)

    def render(self, values: dict[str, Any]) -> list[dict[str, str]]:
        def fill(match: re.Match[str]) -> str:
            return str(values[match.group(1)])

        return [{"role": m["role"], "content": _FIELD.sub(fill, m["content"])} for m in self.messages]


PACKAGED = re.compile(r"^[a-z][a-z0-9_]*(\.v\d+)?$")  # a packaged prompt's id, e.g. `paraphrase` or `augment.v2`


def is_packaged_id(name: str) -> bool:
    """Whether `name` names a packaged prompt (an id, no path); anything else is a file a recipe names."""
    return bool(PACKAGED.match(name))


def load_prompt(name: str | Path, base_dir: Path | None = None) -> Prompt:
    """A packaged prompt by id (`paraphrase`, newest version) or `id.vN`, or a YAML file path (which the caller has
    checked against the recipe's sandbox: `datakit.steps.synthesis.prompt_file`)."""
    path = _find(str(name), base_dir) if not isinstance(name, Path) else name
    if not path.is_file():
        raise PromptError(f"prompt file {path} not found")
    text = read_text(path, "prompt file", PromptError)
    data, _ = parse_yaml(text, path, PromptError)  # the one loader: duplicate keys and syntax errors at file:line
    try:
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in data["messages"]]
        output = data.get("output", "text")
        prompt = Prompt(id=str(data["id"]), version=int(data["version"]), messages=messages, output=output,
                        sha=hashlib.sha256(text.encode()).hexdigest(), path=path)
    except (KeyError, TypeError, ValueError) as exc:
        raise PromptError(f"{path}: not a prompt file (needs id, version, messages[role, content]): {exc}") from None
    if output != "text" and (not isinstance(output, dict) or any(v not in _TYPES for v in output.values())):
        raise PromptError(f"{path}: output must be 'text' or a mapping of field -> {'/'.join(_TYPES)}")
    return prompt


def _find(name: str, base_dir: Path | None) -> Path:
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return path
    if not is_packaged_id(name):
        raise PromptError(f"prompt {name!r}: neither a packaged prompt id (e.g. paraphrase, augment.v1) nor a "
                          "prompt file (a .yaml path)")
    exact = HERE / f"{name}.yaml"
    if exact.is_file():
        return exact
    versions = sorted(HERE.glob(f"{name}.v*.yaml"), key=lambda p: int(p.stem.rsplit(".v", 1)[1]))
    if not versions:
        known = sorted({p.stem.rsplit(".v", 1)[0] for p in HERE.glob("*.yaml")})
        raise PromptError(f"unknown prompt {name!r}; packaged: {', '.join(known)}")
    return versions[-1]
