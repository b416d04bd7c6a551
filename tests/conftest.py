from __future__ import annotations

import json
import os

# pytest-xdist (`make test` runs -n auto): the cores are split between the workers, so the workers' torch (and
# the subprocesses they start) do not each spin up a thread per core; set before anything imports torch
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1)
                                                     // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import asyncio  # noqa: E402
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from datakit.pipeline import BuildResult, build
from datakit.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
BIN = Path(sys.executable).parent


def run(tool: str, *args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    """One of our console scripts in a subprocess, with the tests' cache (and `env` added)."""
    exe = shutil.which(tool, path=str(BIN)) or tool
    base = {"COLUMNS": "200", "PATH": str(BIN), "DATAKIT_CACHE": os.environ["DATAKIT_CACHE"]}
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, env={**base, **(env or {})})


def shared_tmp(tmp_path_factory) -> Path:
    """A folder all of this run's workers share: the run's root under pytest-xdist, else this session's own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def demo_cli(tmp_path_factory) -> Path:
    """The demo recipe built once through `datakit build --report` (shared by the CLI and report tests, and
    by every worker of a parallel run: the first builds it under a lock, the others wait and reuse it)."""
    from filelock import FileLock

    out = shared_tmp(tmp_path_factory) / "cli" / "demo"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / "demo.lock")):
        if not (out / "report.html").is_file():
            res = run("datakit", "build", "recipes/demo.yaml", "--out", str(out), "--quiet", "--report")
            assert res.returncode == 0, res.stderr
            assert "output:" in res.stdout and "articles" in res.stdout and "quarantined:" in res.stdout
            assert "report:" in res.stdout and (out / "report.html").is_file()
    return out


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(textwrap.dedent(content).lstrip("\n"), encoding="utf-8")
    return path


def build_yaml(tmp_path: Path, recipe: str, **kwargs) -> BuildResult:
    """Write a recipe into tmp_path and build it into tmp_path/out."""
    path = write(tmp_path / "recipe.yaml", recipe)
    return build(load_recipe(path), tmp_path / "out", **kwargs)


def qa_corpus(folder: Path) -> Path:
    """A 24-question QA corpus built into folder/corpus/out (what the trainer's CLI tests train on); `folder`."""
    rows = "".join(json.dumps({"question": f"question number {i} about topic {i % 7}",
                               "answer": f"answer {i}: topic {i % 7} is explained here"}) + "\n" for i in range(24))
    write(folder / "corpus" / "qa.jsonl", rows)
    build_yaml(folder / "corpus", "name: qa\nsources: [{name: qa, path: qa.jsonl, adapter: qa}]\n")
    return folder


@pytest.fixture(autouse=True, scope="session")
def _embedding_cache(tmp_path_factory):
    """Keep the tests' caches (embeddings, LLM calls) out of the user's home; one for all workers of a parallel
    run (both caches take concurrent writers)."""
    cache = shared_tmp(tmp_path_factory) / "datakit_cache"
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["DATAKIT_CACHE"] = str(cache)


def require_shared_data() -> Path:
    """../shared/data, or a skip for users (they do not have it); under CI=true (CI has it) a missing folder is a
    failure naming the path, never a silent skip."""
    if not SHARED_DATA.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the real-data folder {SHARED_DATA} is missing")
        pytest.skip("../shared/data is not present (users do not have it)")
    return SHARED_DATA


@pytest.fixture
def shared_data() -> Path:
    return require_shared_data()


# ------------------------------------------------------------------ a real local LLM server
def free_port() -> int:
    """A TCP port nothing listens on now (a fixed one can clash with another run)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LLM_SERVER_KEY = "sk-local-secret"  # `datakit serve-llm` requires it (llama.cpp's server takes any key)


@pytest.fixture(scope="session")
def llm_server():
    """A real OpenAI-compatible server with SmolLM2-135M-Instruct on a free loopback port: `datakit serve-llm`
    (the transformers runtime), or llama.cpp's server with DATAKIT_TEST_SERVER=llama.cpp (extra `local`)."""
    from datakit.llm.embedded import EmbeddedModelError, gguf_path

    try:
        gguf = gguf_path("smollm2")
    except EmbeddedModelError as exc:
        pytest.skip(str(exc))
    port = free_port()
    if os.environ.get("DATAKIT_TEST_SERVER", "").lower() in ("llama.cpp", "llamacpp"):
        pytest.importorskip("llama_cpp")
        cmd = [sys.executable, "-m", "datakit.llm.llamacpp_server", "--model", str(gguf), "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", "2048", "--chat_format", "chatml"]
    else:
        cmd = [sys.executable, "-m", "datakit.llm.serve", "--model", "smollm2", "--port", str(port),
               "--api-key", LLM_SERVER_KEY]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    base = f"http://127.0.0.1:{port}/v1"
    for _ in range(240):
        if proc.poll() is not None:
            pytest.fail(f"LLM server exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            urllib.request.urlopen(urllib.request.Request(f"{base}/models", headers={
                "Authorization": f"Bearer {LLM_SERVER_KEY}"}), timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("LLM server did not start in 120 s")
    yield base
    proc.terminate()
    proc.wait(timeout=10)


# ------------------------------------------------------------------ a fake provider (faults only)
def _reply(text, prompt=10, completion=5):
    return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=text))],
                           usage=SimpleNamespace(prompt_tokens=prompt, completion_tokens=completion))


class FakeTransport:
    """Fake provider, named so (for what a real server cannot be made to do: 429s, timeouts, empty answers,
    refusals). Scripted: each call pops the next outcome (an exception to raise, or a reply text)."""

    def __init__(self, outcomes):
        self.outcomes, self.calls = list(outcomes), 0

    async def __call__(self, **kw):
        self.calls += 1
        out = self.outcomes.pop(0)
        if isinstance(out, Exception):
            raise out
        if isinstance(out, float):
            await asyncio.sleep(out)
            return _reply("late")
        return _reply(out)


