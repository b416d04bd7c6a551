"""On-disk cache of LLM answers (SQLite, WAL): a rerun after a crash repeats no call that already returned."""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import threading
from pathlib import Path
from typing import Any

from embedkit.gguf import cache_root  # the one definition of $DATAKIT_CACHE

SECRET_PARAMS = {"api_key", "api_base", "base_url", "organization", "extra_headers", "headers"}


def cache_key(model: str, messages: list[dict[str, str]], params: dict[str, Any], prompt_version: str,
              sample: int = 0, endpoint: str = "") -> str:
    """Key of one call: model, messages, sampling params (no credentials), prompt version, the sample index
    (with temperature > 0 the k-th sample of a prompt is its own entry) and the endpoint (a normalised
    api_base; "" for the provider's own, whose keys are unchanged from before the endpoint was part of them)."""
    clean = {k: v for k, v in sorted(params.items()) if k not in SECRET_PARAMS}
    parts: list[Any] = [model, messages, clean, prompt_version, sample] + ([endpoint] if endpoint else [])
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def default_path() -> Path:
    return cache_root() / "llm" / "answers.sqlite"


class LLMCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        # every request sent to a provider (an audit trail: a resumed run can show it repeated nothing)
        self._db.execute("CREATE TABLE IF NOT EXISTS sent (key TEXT NOT NULL, pid INTEGER, at REAL)")

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM answers WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Committed at once (autocommit): a kill right after loses nothing that returned."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?)", (key, json.dumps(value, ensure_ascii=False)))

    def log_sent(self, key: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO sent VALUES (?, ?, ?)", (key, os.getpid(), time.time()))

    def sent_counts(self) -> dict[str, int]:
        """How many times each key was sent to a provider, over all runs sharing this cache."""
        with self._lock:
            return dict(self._db.execute("SELECT key, count(*) FROM sent GROUP BY key").fetchall())

    def keys(self) -> set[str]:
        with self._lock:
            return {k for (k,) in self._db.execute("SELECT key FROM answers")}

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
