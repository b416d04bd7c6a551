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

import datetime as dt
import fcntl
import json
import os
import shutil
import signal
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

from datakit.shards import CURRENT, MANIFEST, SHARD_KINDS, build_dir, sha256_file

LOCK = ".lock"
PUBLISH_POINTS = ("staged", "renamed", "linked", "switched", "cleaned")


class OutputBusy(RuntimeError):
    """Another process is writing the output folder."""


class InconsistentOutput(ValueError):
    """The manifest and the shards on disk disagree."""


def fault(point: str) -> None:
    """Test hook: SIGKILL this process at `point` when DATAKIT_FAULT names it."""
    if os.environ.get("DATAKIT_FAULT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


class OutputLock:
    """An exclusive lock on an output folder for the whole of a write."""

    def __init__(self, out_dir: Path, wait: bool = False):
        self.out_dir, self.wait = Path(out_dir), wait
        self.fh = None

    def __enter__(self) -> "OutputLock":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.out_dir / LOCK, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            try:
                h = json.loads(holder)
                who = f"pid {h['pid']} on {h['host']} ({h['command']}, since {h['since']})"
            except (ValueError, KeyError):
                who = "another process"
            raise OutputBusy(f"{self.out_dir} is being written by {who}; wait for it to finish or choose another "
                             "--out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "command": " ".join(os.path.basename(a) for a in sys.argv[:2]) or "python",
                             "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}))
        fh.flush()
        self.fh = fh
        recover(self.out_dir)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fh is not None:
            self.fh.seek(0)
            self.fh.truncate()
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None


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
    """Move a build written before `current` existed into a build folder of its own, manifest last."""
    if not ((out_dir / MANIFEST).is_file() and not (out_dir / MANIFEST).is_symlink()):
        return
    legacy = out_dir / f"build-{uuid.uuid4().hex[:8]}"
    legacy.mkdir()
    manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    for name in [*SHARD_KINDS, *manifest.get("artifacts", [])]:
        if (out_dir / name).exists() and not (out_dir / name).is_symlink():
            (out_dir / name).rename(legacy / name)
    (out_dir / MANIFEST).rename(legacy / MANIFEST)
    _link(out_dir / CURRENT, legacy.name)


def publish(staging: Path, out_dir: Path) -> Path:
    """Make the complete build in `staging` the current one; returns its folder."""
    fault("publish:staged")
    _migrate_legacy(out_dir)
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


def verify(out_dir: str | Path, deep: bool = False) -> list[str]:
    """Disagreements between the manifest and the shards on disk: missing or extra shard files, sizes, row
    counts (from the Arrow stream metadata) and, with `deep`, sha256 digests. Empty when consistent."""
    import pyarrow as pa

    build = build_dir(out_dir)
    manifest = json.loads((build / MANIFEST).read_text(encoding="utf-8"))
    problems = []
    listed = {s["file"]: s for s in manifest.get("shards", [])}
    on_disk = {f"{k}/{p.name}" for k in SHARD_KINDS for p in (build / k).glob("part-*.arrow")}
    for name in sorted(on_disk - set(listed)):
        problems.append(f"{name}: on disk but not in the manifest")
    for name, entry in listed.items():
        path = build / name
        if not path.exists():
            problems.append(f"{name}: in the manifest but missing")
            continue
        if path.stat().st_size != entry["bytes"]:
            problems.append(f"{name}: {path.stat().st_size:,} bytes, the manifest says {entry['bytes']:,}")
            continue
        try:
            with pa.memory_map(str(path)) as source:
                rows = sum(b.num_rows for b in pa.ipc.open_stream(source))
        except pa.ArrowInvalid as exc:
            problems.append(f"{name}: not a readable Arrow stream ({exc})")
            continue
        if rows != entry["rows"]:
            problems.append(f"{name}: {rows:,} rows, the manifest says {entry['rows']:,}")
        elif deep and sha256_file(path) != entry["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest")
    return problems


def checked(out_dir: str | Path) -> Path:
    """The current build folder of OUT, after checking it against its manifest (readers call this)."""
    build = build_dir(out_dir)
    problems = verify(out_dir)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise InconsistentOutput(f"{out_dir}: the shards do not match the manifest ({shown}); rebuild it, or run "
                                 f"`datakit verify {out_dir}`")
    return build
