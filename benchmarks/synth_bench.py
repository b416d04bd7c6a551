"""Synthesis throughput: datakit's LLM client against a local OpenAI-compatible server, and its overhead.

Paraphrases N real questions (WikiQA test, from ../shared/data, or built-in questions without it) with
SmolLM2-135M-Instruct served on 127.0.0.1 by `datakit serve-llm` (default) or llama-cpp-python's server
(`--server llama.cpp`, extra `local`):
  - direct:   raw HTTP POSTs to /v1/chat/completions (httpx, asyncio), the floor any client pays;
  - datakit:  LLMClient (litellm `openai/` provider, SQLite cache, retries, stats) on a cold cache;
  - warm:     the same requests again, every answer from the cache;
  - embedded: LLMClient on `embedded/smollm2` (in process, no server; DATAKIT_EMBEDDED_RUNTIME's runtime).
at concurrency 1, 4 and 16, and prints records/s and datakit's overhead over direct at equal concurrency.

    python benchmarks/synth_bench.py [--n 48] [--max-tokens 32] [--server serve-llm|llama.cpp]
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import httpx

from datakit.llm.cache import LLMCache
from datakit.llm.client import LLMClient
from datakit.llm.embedded import gguf_path
from datakit.llm.prompts import load_prompt

ROOT = Path(__file__).resolve().parents[1]
WIKIQA = ROOT.parent / "shared" / "data" / "wikiqa" / "WikiQA-test.tsv"
FALLBACK = ["how do bees make honey", "why is the sky blue", "what causes ocean tides", "how do vaccines work",
            "what is compound interest", "why do onions make you cry", "how does gps find your position",
            "what is a black hole"]


def questions(n: int) -> list[str]:
    if WIKIQA.exists():
        with WIKIQA.open(encoding="utf-8") as f:
            seen = list(dict.fromkeys(row["Question"] for row in csv.DictReader(f, delimiter="\t")))
        return seen[:n]
    return [f"{FALLBACK[i % len(FALLBACK)]} ({i})" for i in range(n)]


def start_server(kind: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if kind == "llama.cpp":
        cmd = [sys.executable, "-m", "datakit.llm.llamacpp_server", "--model", str(gguf_path("smollm2")),
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--chat_format", "chatml"]
    else:
        cmd = [sys.executable, "-m", "datakit.llm.serve", "--model", "smollm2", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    for _ in range(240):
        try:
            urllib.request.urlopen(f"{base}/models", timeout=1)
            return proc, base
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"the {kind} server did not start")


async def direct(base: str, messages: list[list[dict]], concurrency: int, max_tokens: int) -> float:
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=300) as http:
        async def one(m: list[dict]) -> None:
            async with gate:
                r = await http.post(f"{base}/chat/completions", json={
                    "model": "smollm2", "messages": m, "temperature": 0.0, "max_tokens": max_tokens})
                r.raise_for_status()

        t = time.perf_counter()
        await asyncio.gather(*(one(m) for m in messages))
        return time.perf_counter() - t


def client_run(model: str, cache: Path, messages: list[list[dict]], concurrency: int, max_tokens: int,
               **params) -> tuple[float, LLMClient]:
    client = LLMClient(model, LLMCache(cache), concurrency=concurrency, temperature=0.0, max_tokens=max_tokens,
                       **params)
    t = time.perf_counter()
    answers = client.complete_many([{"messages": m, "prompt_version": "bench"} for m in messages])
    elapsed = time.perf_counter() - t
    assert all(a.text is not None for a in answers), "a request failed"
    return elapsed, client


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--server", choices=["serve-llm", "llama.cpp"], default="serve-llm")
    args = ap.parse_args()
    import os

    os.environ.setdefault("OPENAI_API_KEY", "sk-local")  # the local server ignores it; litellm wants one
    prompt = load_prompt("paraphrase")
    qs = questions(args.n)
    messages = [prompt.render({"text": q}) for q in qs]
    proc, base = start_server(args.server)
    rows = []
    try:
        asyncio.run(direct(base, messages[:2], 1, args.max_tokens))  # warm the server
        with tempfile.TemporaryDirectory() as tmp:
            # warm litellm too (its import takes seconds and is paid once per process, not per request)
            client_run("openai/smollm2", Path(tmp) / "warm.sqlite", messages[:2], 1, args.max_tokens, api_base=base)
            for c in args.concurrency:
                # unique messages per run so the server's prompt cache treats every run alike
                d = asyncio.run(direct(base, messages, c, args.max_tokens))
                cache = Path(tmp) / f"c{c}.sqlite"
                ours, client = client_run("openai/smollm2", cache, messages, c, args.max_tokens, api_base=base)
                warm, again = client_run("openai/smollm2", cache, messages, c, args.max_tokens, api_base=base)
                assert again.stats.calls == 0 and again.stats.cache_hits == len(messages)
                rows.append((c, d, ours, warm, client.stats.completion_tokens))
            emb, eclient = client_run("embedded/smollm2", Path(tmp) / "emb.sqlite", messages, 4, args.max_tokens)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    n = len(messages)
    print(f"\n{n} paraphrase requests, SmolLM2-135M-Instruct Q4_1 served by {args.server}, max_tokens "
          f"{args.max_tokens}, temperature 0, {os.cpu_count()} CPU cores\n")
    print("| concurrency | direct HTTP rec/s | datakit cold rec/s | overhead | datakit warm cache rec/s | tokens/s (cold) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for c, d, ours, warm, toks in rows:
        print(f"| {c} | {n / d:.2f} | {n / ours:.2f} | {100 * (ours / d - 1):+.1f}% | {n / warm:,.0f} | {toks / ours:.1f} |")
    print(f"| embedded (in process), concurrency 4 | | {n / emb:.2f} | | | {eclient.stats.completion_tokens / emb:.1f} |")


if __name__ == "__main__":
    main()
