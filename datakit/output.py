"""Output folders: one writer at a time, an atomic switch to each new build, and readers that check the manifest
against the shards on disk.

Layout of OUT::

    OUT/current -> build-<id>          a symlink: replacing it is the single atomic step of a publish
    OUT/build-<id>/manifest.json       the build: manifest, <kind>/part-*.arrow shards, reports
    OUT/manifest.json, OUT/<kind>, OUT/<report>   links through `current` (stable paths for users and tools)
    OUT/.lock                          held by the writer (flock): pid, host, command, since
    OUT/.staging-<id>                  a build in progress, renamed to build-<id> once complete

A writer takes the lock for its whole run; a second writer fails at once naming the holder (or waits). The
kernel drops a dead process's lock, so a stale lock is simply taken over. Publishing renames the finished
staging folder, makes sure the stable links exist, switches `current`, then removes the old build: a kill at
any point leaves either the previous build or the new one complete, and the next writer removes the leftovers.
`DATAKIT_FAULT=publish:<point>` kills the process at a point of that sequence (tests use it).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import uuid
from pathlib import Path

from datakit.manifest import CURRENT, MANIFEST, SHARD_KINDS
from embedkit.folderlock import FolderBusy, FolderLock

LOCK = ".lock"
PUBLISH_POINTS = ("staged", "renamed", "linked", "switched", "cleaned")


OutputBusy = FolderBusy  # another process is writing the output folder


def fault(point: str) -> None:
    """Test hook: SIGKILL this process at `point` when DATAKIT_FAULT names it."""
    if os.environ.get("DATAKIT_FAULT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


class OutputLock(FolderLock):
    """An exclusive lock on an output folder for the whole of a write; taking it removes what an interrupted
    writer left (`recover`)."""

    def __enter__(self) -> "OutputLock":
        super().__enter__()
        _migrate_legacy(self.folder)  # a legacy build (or one a kill left half moved) becomes `current`
        recover(self.folder)
        return self


def new_staging(out_dir: Path) -> Path:
    staging = out_dir / f".staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    return staging


def _link(path: Path, target: str) -> None:
    """Make `path` a symlink to `target` (relative), replacing what is there atomically."""
    if path.is_symlink() and os.readlink(path) == target:
        return
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.tmp")
    os.symlink(target, tmp)
    if path.exists() and not path.is_symlink():
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    os.replace(tmp, path)


def _migrate_legacy(out_dir: Path) -> None:
    """Move a build written before `current` existed into a build folder of its own, manifest last. `current`
    is linked to that folder first, so `recover` never removes it, and a migration a kill cut short is resumed
    (the root manifest is still a real file while `current` names the folder being filled)."""
    if not ((out_dir / MANIFEST).is_file() and not (out_dir / MANIFEST).is_symlink()):
        return
    if (out_dir / CURRENT).is_symlink():
        legacy = out_dir / os.readlink(out_dir / CURRENT)  # resume
    else:
        legacy = out_dir / f"build-{uuid.uuid4().hex[:8]}"
        _link(out_dir / CURRENT, legacy.name)
    legacy.mkdir(exist_ok=True)
    manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    for name in [*SHARD_KINDS, *manifest.get("artifacts", [])]:
        if (out_dir / name).exists() and not (out_dir / name).is_symlink():
            (out_dir / name).rename(legacy / name)
    fault("migrate:moved")
    (out_dir / MANIFEST).rename(legacy / MANIFEST)


def publish(staging: Path, out_dir: Path) -> Path:
    """Make the complete build in `staging` the current one; returns its folder."""
    fault("publish:staged")
    build = out_dir / f"build-{staging.name.removeprefix('.staging-')}"
    staging.rename(build)
    fault("publish:renamed")
    manifest = json.loads((build / MANIFEST).read_text(encoding="utf-8"))
    for name in [*SHARD_KINDS, MANIFEST, *manifest.get("artifacts", [])]:
        _link(out_dir / name, f"{CURRENT}/{name}")
    fault("publish:linked")
    _link(out_dir / CURRENT, build.name)
    fault("publish:switched")
    recover(out_dir)
    fault("publish:cleaned")
    return build


def recover(out_dir: Path) -> None:
    """Remove what an interrupted writer left: staging folders, builds that are not current, dangling report
    links. Only called under the lock."""
    current = os.readlink(out_dir / CURRENT) if (out_dir / CURRENT).is_symlink() else None
    for item in out_dir.iterdir():
        if item.name.startswith(".staging-") or (item.name.startswith("build-") and item.name != current):
            shutil.rmtree(item, ignore_errors=True)
        elif item.name.startswith(".") and item.name.endswith(".tmp") and item.is_symlink():
            item.unlink()
        elif item.is_symlink() and item.name != CURRENT and not item.exists():
            item.unlink()  # a report the current build does not have
