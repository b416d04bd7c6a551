"""Config files (recipes, training configs, task files, experiment files): one YAML loader, pydantic models
that forbid unknown keys, and errors that name the file, the line and the key.

The loader reads floats the way YAML 1.2 and people do: `lr: 3e-5` is a number (PyYAML's YAML 1.1 rules make
it the string "3e-5"). A YAML syntax error is one line naming the file, line and column, and a key given twice
in one mapping is an error (YAML loaders silently keep the last).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file (or a value in it) is not valid; the message names the file, line and key at fault.
    Commands exit 2 on it: nothing ran."""


class Strict(BaseModel):
    """A config section: unknown keys are errors (a typo never silently takes a default)."""

    model_config = ConfigDict(extra="forbid")


class StrictTyped(BaseModel):
    """A config section whose values must already have their type: a quoted "0.02" is not a number."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-5` / `3E+2` (no dot) as floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_text(path: Path, what: str, error: type[Exception] = ConfigError) -> str:
    """A config file's text, or `error` saying why it cannot be read (missing, unreadable, not UTF-8)."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc})") from None


def parse_yaml(text: str, path: Path, error: type[Exception] = ConfigError) -> tuple[Any, yaml.Node | None]:
    """(data, node tree) of YAML text, parsed once; a syntax error is one line naming file, line and column."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = " ".join(x for x in (exc.context, exc.problem) if x)
        raise error(f"{where}: not valid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    _no_duplicate_keys(root, path, error)
    return data, root


def _no_duplicate_keys(node: yaml.Node | None, path: Path, error: type[Exception]) -> None:
    """A key given twice in one mapping is an error (YAML loaders silently keep the last one)."""
    stack = [node] if node is not None else []
    while stack:
        n = stack.pop()
        if isinstance(n, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in n.value:
                if isinstance(k, yaml.ScalarNode) and k.value != "<<":
                    if k.value in seen:
                        raise error(f"{path}:{k.start_mark.line + 1}: {k.value!r} is given twice in one mapping "
                                    f"(first on line {seen[k.value]})")
                    seen[k.value] = k.start_mark.line + 1
                stack.append(v)
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)


def load_yaml(path: str | Path, what: str, error: type[Exception] = ConfigError) -> tuple[Any, yaml.Node | None]:
    """Read and parse a YAML config file: (data, node tree)."""
    path = Path(path)
    return parse_yaml(read_text(path, what, error), path, error)


def line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """Follow a pydantic error location through the YAML node tree; return a 1-based line."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if k.value == str(key):
                    nxt, line = v, k.start_mark.line + 1
                    break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
        if node is None:
            break
    return line


def key_name(loc: tuple[Any, ...]) -> str:
    """`stages[0].lr` for the location ("stages", 0, "lr")."""
    return ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")


def _message(err: dict[str, Any]) -> str:
    loc = err["loc"]
    if err["type"] == "extra_forbidden":
        return f"unknown key {str(loc[-1])!r}"
    if err["type"] == "union_tag_invalid":  # a typed list of sections keyed by a tag (a recipe's step `type`)
        ctx = err["ctx"]
        section = next((p for p in reversed(loc) if isinstance(p, str)), "")
        noun = f"{section[:-1] if section.endswith('s') else section} " if section else ""
        return f"unknown {noun}{ctx['discriminator'].strip(chr(39))} {ctx['tag']!r}; known: {ctx['expected_tags']}"
    if err["type"] == "union_tag_not_found":
        return f"no {err['ctx']['discriminator']} key"
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if err["type"].endswith("_type") and isinstance(value, (str, int, float, bool)):
        msg += f", got {value!r} ({type(value).__name__})"
        if isinstance(value, str) and _is_number(value):
            msg += ": write the number without quotes"
    return msg


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _pydantic_locs(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop the validator-name parts pydantic inserts into locations (`function-after[...]`, union members)."""
    def inserted(part: Any) -> bool:
        return isinstance(part, str) and (("[" in part and part.endswith("]")) or part.startswith("function-"))

    return tuple(p for p in loc if not inserted(p))


def _without_tags(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """Drop what pydantic inserts into a location that is not a key of the data: the tag of a tagged union
    (`steps.0.dedup.threshold` is `steps[0].threshold` in the file)."""
    out: list[Any] = []
    for i, key in enumerate(loc):
        if isinstance(data, dict):
            if key not in data and i < len(loc) - 1:
                continue
            data = data.get(key)
        elif isinstance(data, list) and isinstance(key, int) and key < len(data):
            data = data[key]
        else:
            data = None
        out.append(key)
    return tuple(out)


def format_errors(exc: ValidationError, root: yaml.Node | None, prefix: tuple[Any, ...], path: Path,
                  data: Any = None) -> list[str]:
    """One `file:line: key: message` per pydantic error (`data`: the validated input, to tell keys from the
    tags pydantic adds to locations)."""
    lines = []
    for err in exc.errors():
        loc = _pydantic_locs(tuple(err["loc"]))
        if data is not None:
            loc = _without_tags(loc, data)
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = loc + (err["ctx"]["discriminator"].strip("'"),)
        loc = prefix + loc
        line = line_of(root, loc)
        where = f"{path}:{line}" if line else str(path)
        lines.append(f"{where}: {key_name(loc) or '<root>'}: {_message(err)}")
    return list(dict.fromkeys(lines))


def validate(model: type[M], data: Any, path: Path, root: yaml.Node | None = None, what: str = "config",
             error: type[Exception] = ConfigError) -> M:
    """`data` as a `model`, or `error` listing every bad key with its line."""
    if not isinstance(data, dict):
        raise error(f"{path}: a {what} is a mapping of keys (got {type(data).__name__})")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error("\n".join(format_errors(exc, root, (), path, data))) from None
