"""Output folders we may write into: never a folder that holds something we did not write.

Every command that writes a folder (`datakit build/dedup/decontaminate --out`, `datakit bench build --out`,
`trainer run`'s output_dir, `trainer eval --out`, `trainer experiment --out`) claims it first:

- a folder that does not exist, or is empty, is ours: we write the marker `.embedkit-output` (its kind) into it;
- a folder that holds our marker of the same kind is ours, as long as everything in it is a name that kind
  writes (a file the user put there later is named, not replaced);
- a folder written before the marker existed is ours when it looks exactly like that kind's output
  (`looks_ours`), and gets the marker;
- anything else is an `OutputRefused` error naming the folder and what is in it. `/`, the home folder and
  the current folder's ancestors are refused whatever they hold.

Deleting follows the same rule: recovery removes only folders that carry our build marker (`BUILD_MARKER`)
or are empty (`owned_scratch`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from embedkit.configfile import ConfigError

MARKER = ".embedkit-output"
BUILD_MARKER = ".embedkit-build"  # inside each build / staging folder we create (recovery deletes only those)
LOCK = ".lock"


class OutputRefused(ConfigError):
    """The output folder is not one we may write into (exit 2: nothing was written)."""


def _shown(names: list[str], limit: int = 6) -> str:
    head = ", ".join(sorted(names)[:limit])
    return head + (f" and {len(names) - limit} more" if len(names) > limit else "")


def refuse_special(folder: Path, flag: str = "--out") -> None:
    """`/`, the home folder, and a folder that holds the current folder are never an output."""
    real = folder.expanduser().resolve()
    home = Path.home().resolve()
    if real == Path(real.anchor):
        raise OutputRefused(f"{flag} {folder}: the file system root is never an output folder; give a new folder")
    if real == home:
        raise OutputRefused(f"{flag} {folder}: the home folder is never an output folder; give a new folder")
    cwd = Path.cwd().resolve()
    if real != cwd and real in cwd.parents:
        raise OutputRefused(f"{flag} {folder}: it holds the current folder ({cwd}); give a new folder")


def read_marker(folder: Path) -> str | None:
    """The kind named by `folder`'s marker, or None."""
    try:
        return json.loads((folder / MARKER).read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def claim(folder: str | Path, kind: str, known: Callable[[Path], bool], looks_ours: Callable[[Path], bool],
          flag: str = "--out", hint: str = "give a new or empty folder") -> Path:
    """Make sure we may write `kind` output into `folder` (created if missing) and mark it; OutputRefused
    otherwise. `known(path)`: whether `kind` writes that entry at the folder's top;
    `looks_ours(folder)`: whether an unmarked folder is a `kind` output written before markers existed."""
    folder = Path(folder)
    refuse_special(folder, flag)
    if folder.is_symlink() and not folder.exists():
        raise OutputRefused(f"{flag} {folder}: a broken symbolic link; give a new folder")
    if folder.exists() and not folder.is_dir():
        raise OutputRefused(f"{flag} {folder}: a file is there, not a folder; {hint}")
    folder.mkdir(parents=True, exist_ok=True)
    entries = [p.name for p in folder.iterdir()]
    marked = read_marker(folder) if MARKER in entries else None
    if MARKER in entries and marked != kind:
        what = f"a {marked} folder" if marked else "a folder with an unreadable marker"
        raise OutputRefused(f"{flag} {folder}: {what}, not a {kind} folder; {hint}")
    others = [n for n in entries if n not in (MARKER, LOCK)]
    if others and marked is None and not looks_ours(folder):
        raise OutputRefused(f"{flag} {folder}: the folder is not empty and was not written by this tool "
                            f"(it holds {_shown(others)}); nothing in it is touched; {hint}")
    foreign = [n for n in others if not known(folder / n)]
    if foreign:
        raise OutputRefused(f"{flag} {folder}: it holds {_shown(foreign)}, which this tool did not write; "
                            f"nothing in it is touched; move them out or {hint}")
    if marked is None:
        tmp = folder / f"{MARKER}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"kind": kind}) + "\n", encoding="utf-8")
        tmp.replace(folder / MARKER)
    return folder


def mark_build(folder: Path) -> None:
    """Mark a build or staging folder we just created as ours (recovery deletes only marked ones)."""
    (folder / BUILD_MARKER).write_text("", encoding="utf-8")


def owned_scratch(folder: Path) -> bool:
    """Whether `folder` (a build or staging folder) is provably ours: it carries the build marker, or is empty
    (a kill between its mkdir and its marker). Symbolic links are never ours to delete through."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    if (folder / BUILD_MARKER).exists():
        return True
    return not any(folder.iterdir())


def inside(child: Path, parent: Path) -> bool:
    """Whether `child` is `parent` or lies below it (both resolved)."""
    child, parent = child.expanduser().resolve(), parent.expanduser().resolve()
    return child == parent or parent in child.parents
