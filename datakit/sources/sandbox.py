"""The Sandbox: the folders a recipe (or a task file) may read, and how its relative paths resolve. A security policy:
every path a recipe names goes through it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datakit.sources.syntax import SourceError
from embedkit.gguf import cache_root  # the one definition of $DATAKIT_CACHE

CACHE_KEYS = ("llm.cache", "cache_dir")  # written, not read into the corpus: also allowed under $DATAKIT_CACHE


@dataclass(frozen=True)
class Sandbox:
    """Where a recipe (or an eval task file) may read: its own folder, and the files and folders it lists under
    `allow_paths`. Recipes are shared; a shared recipe must not read `/etc/passwd` into a corpus. Every path a
    source names (`path:`, a local `hf:` folder, the files recipe SQL reads, a mining pool) resolves (symlinks
    followed) inside one of these roots, or the source fails naming it."""

    base_dir: Path  # relative paths resolve against it
    allowed: tuple[Path, ...] = ()  # resolved allow_paths
    owner: str = "recipe"  # whose folder it is, for messages ("task file")

    @classmethod
    def of(cls, base_dir: str | Path, allow_paths: list[str] | tuple[str, ...] = (),
           owner: str = "recipe") -> "Sandbox":
        base = Path(base_dir).expanduser().resolve()
        allowed = []
        for item in allow_paths:
            p = Path(item).expanduser()
            allowed.append((p if p.is_absolute() else base / p).resolve())
        return cls(base, tuple(allowed), owner)

    @classmethod
    def anywhere(cls, base_dir: str | Path) -> "Sandbox":
        """No limit (the user's own command-line arguments, not a shared file); relative paths from `base_dir`."""
        return cls(Path(base_dir).expanduser().resolve(), (Path("/"),), "command")

    @property
    def roots(self) -> tuple[Path, ...]:
        return (self.base_dir, *self.allowed)

    def absolute(self, item: str | Path) -> Path:
        """`item` as an absolute path (relative to `base_dir`), not yet checked."""
        p = Path(item).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def allows(self, path: Path) -> bool:
        real = path.resolve()
        return any(real == root or root in real.parents for root in self.roots)

    def check(self, path: Path, what: str) -> Path:
        """`path` if it resolves inside a root; else a SourceError naming it and how to allow it."""
        if not self.allows(path):
            real = path.resolve()
            shown = f"{path} (-> {real})" if real != path else str(path)
            raise SourceError(f"{what}: {shown} is outside the {self.owner}'s folder {self.base_dir}"
                              + (f" and its allow_paths ({', '.join(map(str, self.allowed))})" if self.allowed else "")
                              + f"; a {self.owner} reads only its own folder and the paths it lists under "
                              "`allow_paths:`")
        return path

    def named(self, key: str, value: str | Path) -> Path:
        """The one resolver for a path a recipe's key names: inside the sandbox (a cache, a key ending in
        CACHE_KEYS, also inside $DATAKIT_CACHE, where every build's caches live); a SourceError naming the key
        otherwise."""
        path = self.absolute(value)
        if key.endswith(CACHE_KEYS):
            root = cache_root().expanduser().resolve()
            real = path.resolve()
            if real == root or root in real.parents:
                return path
        return self.check(path, key)
