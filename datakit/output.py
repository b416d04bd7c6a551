"""Output folders: one writer at a time, an atomic switch to each new build, and readers that check the manifest
against the shards on disk.

Layout of OUT::

    OUT/current -> build-<id>          a symlink: replacing it is the single atomic step of a publish
    OUT/build-<id>/manifest.json       the build: manifest, <kind>/part-*.arrow shards, reports
    OUT/manifest.json, OUT/<kind>, OUT/<report>   links through `current` (stable paths for users and tools)
    OUT/.lock                          held by the writer (flock): pid, host, command, since
    OUT/.staging-<id>                  a build in progress, renamed to build-<id> once complete
    OUT/.embedkit-output               the marker: datakit made this folder (embedkit.outfolder)

Only a new or empty folder, or one datakit made, is written into (`claim_output`); recovery deletes only
build and staging folders that carry datakit's build marker.

A writer takes the lock for its whole run; a second writer fails at once naming the holder (or waits). The
kernel drops a dead process's lock, so a stale lock is simply taken over. Publishing renames the finished
staging folder, makes sure the stable links exist, switches `current`, then removes the old build: a kill at
any point leaves either the previous build or the new one complete, and the next writer removes the leftovers.
`DATAKIT_FAULT=publish:<point>` kills the process at a point of that sequence (tests use it).
"""
from __future__ import annotations

import os
import shutil
import signal
import uuid
from pathlib import Path

from datakit.manifest import CURRENT, MANIFEST, SHARD_KINDS, load
from embedkit.folderlock import FolderBusy, FolderLock
from embedkit.outfolder import LOCK, OutputRefused, claim, mark_build, owned_scratch

PUBLISH_POINTS = ("staged", "renamed", "linked", "switched", "cleaned")


OutputBusy = FolderBusy  # another process is writing the output folder


def fault(point: str) -> None:
    """Test hook: SIGKILL this process at `point` when DATAKIT_FAULT names it."""
    if os.environ.get("DATAKIT_FAULT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


KIND = "datakit output"
EXTRA_NAMES = ("report.html", "compare.html", "heldout")  # written into OUT by `datakit report` and steps


def _known(path: Path) -> bool:
    """Whether an entry at the top of an output folder is one datakit writes there."""
    name = path.name
    if name in (CURRENT, MANIFEST, LOCK, *SHARD_KINDS, *EXTRA_NAMES) or name.startswith(("build-", ".staging-")):
        return True
    if name.startswith(".") and name.endswith(".tmp"):
        return path.is_symlink()
    return path.is_symlink() and os.readlink(path).startswith(f"{CURRENT}/")  # a report of the current build


def _looks_ours(folder: Path) -> bool:
    """An output written before the marker existed: `current` links a build folder that holds a manifest."""
    link = folder / CURRENT
    return link.is_symlink() and os.readlink(link).startswith("build-") and (folder / os.readlink(link) / MANIFEST).is_file()


def claim_output(folder: Path, flag: str = "--out") -> Path:
    """Refuse an output folder datakit did not make (embedkit.outfolder); mark a new one."""
    return claim(folder, KIND, _known, _looks_ours, flag)


class OutputLock(FolderLock):
    """An exclusive lock on an output folder for the whole of a write; the folder must be one datakit may write
    into (`claim_output`: new, empty, or made by datakit); taking the lock removes what an interrupted writer
    left (`recover`)."""

    def __enter__(self) -> "OutputLock":
        claim_output(self.folder)
        super().__enter__()
        recover(self.folder)
        return self


def new_staging(out_dir: Path) -> Path:
    staging = out_dir / f".staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    mark_build(staging)
    return staging


def _link(path: Path, target: str) -> None:
    """Make `path` a symlink to `target` (relative), replacing only a symlink we made (never a user's file)."""
    if path.is_symlink() and os.readlink(path) == target:
        return
    if path.exists() or path.is_symlink():
        if not (path.is_symlink() and (os.readlink(path) == CURRENT or os.readlink(path).startswith(("build-",
                                                                                                  f"{CURRENT}/")))):
            raise OutputRefused(f"{path}: a file this tool did not write is where the build's link goes; nothing was "
                                f"published (move it out and build again)")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.tmp")
    os.symlink(target, tmp)
    os.replace(tmp, path)


def publish(staging: Path, out_dir: Path) -> Path:
    """Make the complete build in `staging` the current one; returns its folder."""
    fault("publish:staged")
    build = out_dir / f"build-{staging.name.removeprefix('.staging-')}"
    staging.rename(build)
    fault("publish:renamed")
    for name in [*SHARD_KINDS, MANIFEST, *load(build).artifacts]:
        _link(out_dir / name, f"{CURRENT}/{name}")
    fault("publish:linked")
    _link(out_dir / CURRENT, build.name)
    fault("publish:switched")
    recover(out_dir)
    fault("publish:cleaned")
    return build


def recover(out_dir: Path) -> None:
    """Remove what an interrupted writer left: staging folders and builds that are not current (only those that
    carry our build marker: `owned_scratch`), our temporary links, links to reports the current build does not
    have. Only called under the lock."""
    current = os.readlink(out_dir / CURRENT) if (out_dir / CURRENT).is_symlink() else None
    for item in out_dir.iterdir():
        if item.name.startswith(".staging-") or (item.name.startswith("build-") and item.name != current):
            if owned_scratch(item):
                shutil.rmtree(item, ignore_errors=True)
        elif item.name.startswith(".") and item.name.endswith(".tmp") and item.is_symlink():
            item.unlink()
        elif item.is_symlink() and item.name != CURRENT and not item.exists() and \
                os.readlink(item).startswith(f"{CURRENT}/"):
            item.unlink()  # a report the current build does not have
