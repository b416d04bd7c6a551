"""Finding a source's files (globs, folders, what no reader takes), their digests, and opening them (gzip tolerated
when truncated).
"""
from __future__ import annotations

import glob
import gzip
import io
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datakit.sources.sandbox import Sandbox
from datakit.sources.syntax import EXTENSIONS, SourceError


@dataclass
class InputFiles:
    """The files a `path:` names, and the files of its folders that no reader takes (listed, never silently
    skipped: they go to the manifest's inputs and the build's summary)."""

    files: list[Path]
    skipped: list[dict[str, str]] = field(default_factory=list)  # {file, reason}


def input_files(spec: str | list[str], sandbox: Sandbox) -> InputFiles:
    """Expand files, globs and folders (relative to the recipe) into a sorted file list, each inside the sandbox."""
    found_all = InputFiles([])
    for item in [spec] if isinstance(spec, str) else spec:
        p = sandbox.absolute(item)
        if p.is_dir():
            sandbox.check(p, f"path {item!r}")
            found = []
            for f in _folder_files(p, sandbox, found_all.skipped):
                if format_of(f) is None:
                    kind = "".join(f.suffixes) or "a file without an extension"
                    found_all.skipped.append({"file": shown_path(f, sandbox.base_dir), "reason": f"no reader for {kind}"})
                else:
                    found.append(f)
        elif any(ch in str(p) for ch in "*?["):
            found = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
            if not found:
                sandbox.check(Path(glob_prefix(str(p))), f"path {item!r}")
        else:
            found = [p] if p.exists() else []
        if not found:
            raise SourceError(f"no input file matches {item!r} (looked in {p})")
        for f in found:
            sandbox.check(f, f"path {item!r}")
        for f in [f for f in found if f.stat().st_size == 0]:  # no rows, no header: nothing to read or lose
            found_all.skipped.append({"file": shown_path(f, sandbox.base_dir), "reason": "empty file (0 bytes)"})
            found.remove(f)
        found_all.files += found
    return found_all


def _folder_files(folder: Path, sandbox: Sandbox, skipped: list[dict[str, str]]) -> list[Path]:
    """Every file below `folder`, sorted, following symbolic links to folders that stay inside the sandbox (each
    real folder once: a link cycle ends); a linked folder outside it is listed in `skipped`, never read."""
    files: list[Path] = []
    seen = {folder.resolve()}
    for root, dirs, names in os.walk(folder, followlinks=True):
        here = Path(root)
        for d in list(dirs):
            sub = here / d
            if sub.is_symlink():
                real = sub.resolve()
                if not sandbox.allows(sub):
                    skipped.append({"file": shown_path(sub, sandbox.base_dir),
                                    "reason": f"a link to the folder {real}, outside the {sandbox.owner}'s folder "
                                              "and allow_paths: not read"})
                    dirs.remove(d)
                    continue
                if real in seen:
                    dirs.remove(d)  # a folder already walked (or a link cycle)
                    continue
                seen.add(real)
        files += [here / n for n in names if (here / n).is_file()]
    return sorted(files)


def file_digest(path: Path) -> str:
    """xxh3_128 of a file's bytes (1 MiB reads): an edit that keeps the size and mtime still shows. (A checksum,
    not a cryptographic hash: it tells an edit from no edit, ten times faster than blake2b.)"""
    import xxhash

    h = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_files(spec: str | list[str], sandbox: Sandbox) -> list[Path]:
    return input_files(spec, sandbox).files


def glob_prefix(pattern: str) -> str:
    """The folder part of a glob pattern before its first wildcard."""
    head = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    return head if head.endswith("/") or not head else str(Path(head).parent)


def format_of(path: Path) -> str | None:
    suffixes = [s for s in path.suffixes if s not in (".gz", ".bz2", ".zst")]
    return EXTENSIONS.get(suffixes[-1].lower()) if suffixes else None


def shown_path(path: Path, base_dir: Path) -> str:
    try:
        return str(path.relative_to(base_dir))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- compressed input
class TolerantGzip(io.RawIOBase):
    """A gzip stream that ends cleanly where the file is truncated or corrupt: it returns the bytes before the
    break up to the last complete line (the partial line after it is dropped), and records where it broke
    (`broken`)."""

    def __init__(self, path: Path):
        self._gz = gzip.open(path, "rb")
        self._ready = b""  # complete lines, ready to hand out
        self._pending = b""  # the bytes after the last newline, held until more data (or a clean end)
        self._done = False
        self.delivered = 0
        self.broken: dict[str, Any] | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        if not self._ready:
            self._fill()
        n = min(len(buf), len(self._ready))
        buf[:n] = self._ready[:n]
        self._ready = self._ready[n:]
        self.delivered += n
        return n

    def _fill(self) -> None:
        while not self._ready and not self._done:
            try:
                data = self._gz.read1(1 << 16)  # what is decompressed so far: nothing before a break is lost
            except (EOFError, OSError, zlib.error) as exc:
                self.broken = {"byte": self.delivered, "error": str(exc) or type(exc).__name__}
                self._done, self._pending = True, b""  # the cut line is dropped
                return
            if not data:  # a clean end: the last line may lack its newline
                self._ready, self._pending, self._done = self._pending, b"", True
                return
            data = self._pending + data
            cut = data.rfind(b"\n") + 1
            if cut == 0 and len(data) >= 1 << 24:  # no newline in 16 MiB: not line-based, let it through
                cut = len(data)
            self._ready, self._pending = data[:cut], data[cut:]

    def close(self) -> None:
        self._gz.close()
        super().close()


def open_bytes(path: Path) -> io.BufferedIOBase:
    if path.suffix == ".gz":
        return io.BufferedReader(TolerantGzip(path), buffer_size=1 << 20)  # type: ignore[return-value]
    return open(path, "rb")


def stream_break(fh: Any) -> dict[str, Any] | None:
    raw = getattr(fh, "raw", fh)
    return getattr(raw, "broken", None)
