"""An exclusive lock on a folder for the whole of a write (flock on FOLDER/.lock), naming its holder.

The kernel drops a dead process's lock, so a lock left by a killed process is simply taken over."""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

LOCK = ".lock"


class FolderBusy(RuntimeError):
    """Another process is writing the folder."""


def holder_of(text: str) -> str:
    try:
        h = json.loads(text)
        return f"pid {h['pid']} on {h['host']} ({h['command']}, since {h['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


class FolderLock:
    """`with FolderLock(folder):` holds FOLDER/.lock; a second holder fails at once naming the first (or waits)."""

    def __init__(self, folder: str | Path, wait: bool = False, hint: str = "choose another --out"):
        self.folder, self.wait, self.hint = Path(folder), wait, hint
        self.fh = None

    def __enter__(self) -> "FolderLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        fh = open(self.folder / LOCK, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            fh.seek(0)
            who = holder_of(fh.read().strip())
            fh.close()
            raise FolderBusy(f"{self.folder} is being written by {who}; wait for it to finish or "
                             f"{self.hint}") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "command": " ".join(os.path.basename(a) for a in sys.argv[:2]) or "python",
                             "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}))
        fh.flush()
        self.fh = fh
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fh is not None:
            self.fh.seek(0)
            self.fh.truncate()
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None
