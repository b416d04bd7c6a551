"""What both command-line tools (`datakit`, `trainer`) do alike: consoles, one-line errors and exit codes.

Exit codes: 0 success; 1 the run failed (bad data, a fault of the environment, a model that cannot load, a bug);
2 the command line or a config file is wrong (nothing ran). No command ends in a traceback on bad input or a
fault of the environment: those are one line naming the file or cause. Our own bugs print one line too, with
the traceback written to a log file; `--debug` (or EMBEDKIT_DEBUG=1) prints it instead.
"""
from __future__ import annotations

import datetime as dt
import errno
import os
import sys
import tempfile
import traceback
from typing import Callable, NoReturn

from rich.console import Console

from embedkit.configfile import ConfigError

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
DEBUG_ENV = "EMBEDKIT_DEBUG"


def _console(stderr: bool) -> Console:
    """A rich console; when the stream is not a terminal (CI logs, pipes), tables get their full width instead of
    80 columns (COLUMNS still wins)."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else 400
    return Console(stderr=stderr, width=width)


console = _console(False)
err = _console(True)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print `error: message` on stderr and exit with `code`."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)
    raise SystemExit(code)


def set_debug(on: bool) -> None:
    if on:
        os.environ[DEBUG_ENV] = "1"


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def describe_os_error(exc: OSError) -> str:
    """One line for a fault of the file system: the path, what went wrong, and what was not touched."""
    path = exc.filename or ""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on the device"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = f"not writable ({exc.strerror})"
    elif exc.errno == errno.ENOTDIR:
        reason = "a part of the path is a file, not a folder"
    elif exc.errno == errno.EEXIST and path and os.path.isfile(path):
        reason = "a file is there, not a folder"
    where = f"{path}: " if path else ""
    return f"{where}{reason}"


def _crash_log(text: str) -> str | None:
    try:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        fd, name = tempfile.mkstemp(prefix=f"embedkit-error-{stamp}-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        return name
    except OSError:
        return None


def guarded(run: Callable[[], object], bad_input: tuple[type[BaseException], ...] = ()) -> NoReturn:
    """Run a CLI app; turn what escapes it into one line and an exit code (see the module docstring)."""
    try:
        run()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        err.print("interrupted", highlight=False)
        raise SystemExit(130) from None
    except BaseException as exc:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if _debug():
            traceback.print_exc()
            raise SystemExit(EXIT_BAD_INPUT if isinstance(exc, (ConfigError, *bad_input)) else EXIT_FAILED) from None
        if isinstance(exc, (ConfigError, *bad_input)):
            fail(str(exc), EXIT_BAD_INPUT)
        if isinstance(exc, OSError):
            fail(describe_os_error(exc))
        if isinstance(exc, MemoryError):
            fail("out of memory")
        log = _crash_log(traceback.format_exc())
        where = f"; traceback in {log}" if log else ""
        text = str(exc).strip()
        if not isinstance(exc, ValueError) or not text:  # our own errors are ValueErrors with a message
            text = f"{type(exc).__name__}: {text}".rstrip(": ")
        fail(f"{text}{where} (--debug prints it)")
    raise SystemExit(0)
