"""llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server` arguments) with the model loaded as
the embedded provider loads it (`embedded.without_extra_buffers`): `python -m datakit.llm.llamacpp_server --model
FILE.gguf --port 8080`. The tests and `benchmarks/synth_bench.py` serve SmolLM2 through it."""
from __future__ import annotations

import runpy

from datakit.llm.embedded import without_extra_buffers

if __name__ == "__main__":
    with without_extra_buffers():  # for the server's lifetime: it loads its model after start-up
        runpy.run_module("llama_cpp.server", run_name="__main__")
