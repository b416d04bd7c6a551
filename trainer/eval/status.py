"""`OUT/eval-status.json`: whether an eval's results folder is complete. Written `running` before the first
task, `complete` after the last; an interrupted eval (Ctrl-C, an error) leaves `incomplete` with the reason, a
killed one leaves `running` with a pid that no longer runs (read as incomplete). Readers (`--compare`,
experiments) say so instead of comparing partial results as if they were whole."""
from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

STATUS = "eval-status.json"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _write(out: Path, doc: dict[str, Any]) -> None:
    tmp = out / f"{STATUS}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    tmp.replace(out / STATUS)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_status(out: str | Path) -> tuple[str, str]:
    """(state, why) of a results folder: complete, incomplete, running, or unknown (no status file: written
    before it existed, or by mteb itself)."""
    path = Path(out) / STATUS
    if not path.exists():
        return "unknown", ""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "incomplete", f"{path} is not readable"
    state = doc.get("state", "incomplete")
    if state == "running" and not _alive(int(doc.get("pid", 0) or 0)):
        return "incomplete", f"the eval started {doc.get('started')} (pid {doc.get('pid')}) was killed"
    return state, doc.get("reason", "")


class EvalStatus:
    """`with EvalStatus(out, models, tasks):` marks the folder running, then complete or incomplete."""

    def __init__(self, out: Path, models: list[str], tasks: list[str]):
        self.out, self.doc = out, {"models": models, "tasks": tasks, "pid": os.getpid(), "started": _now()}
        self.failed: list[str] = []  # tasks that failed (the eval went on without them)

    def __enter__(self) -> "EvalStatus":
        self.out.mkdir(parents=True, exist_ok=True)
        _write(self.out, {"state": "running", **self.doc})
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if kind is None and not self.failed:
            _write(self.out, {"state": "complete", **self.doc, "finished": _now()})
            return
        if kind is None:
            _write(self.out, {"state": "incomplete", "reason": f"failed: {', '.join(self.failed)}", **self.doc,
                              "finished": _now()})
            return
        reason = "interrupted (Ctrl-C)" if kind is KeyboardInterrupt else f"{kind.__name__}: {str(exc)[:200]}"
        _write(self.out, {"state": "incomplete", "reason": reason, **self.doc, "stopped": _now()})
        from embedkit.clitools import err

        err.print(f"the results in {self.out} are incomplete ({reason}); {STATUS} says so", highlight=False)
