"""GGUF weights as an ordinary transformers model, converted once and kept: the embedded LLM that writes data
(datakit.llm) and the decoder the trainer turns into an embedder (trainer.model) both load SmolLM2's GGUF, and
dequantising it costs ~16-25 s on two cores each time; the converted copy (safetensors, float32: exactly the
dequantised weights) loads in a few seconds. Torch and transformers are imported only when a model loads.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def cache_root() -> Path:
    """$DATAKIT_CACHE, default ~/.cache/datakit (shared with datakit's answer and embedding caches)."""
    return Path(os.environ.get("DATAKIT_CACHE", Path.home() / ".cache" / "datakit"))


@contextlib.contextmanager
def gguf_loading() -> Iterator[None]:
    """Quiet, faster GGUF loading through transformers: no progress bars (its "de-quantizing GGUF tensors" bar
    is a bare tqdm); the file parsed once for tokenizer and model, not once each; gguf's tensor-name map built
    once, not once per submodule (transformers walks every module). Together 40 s -> 16 s for SmolLM2 on two
    cores. Patches are undone on exit, and skipped where a layout differs (they only save time)."""
    import gguf
    from transformers.utils import logging as hf_logging

    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        gguf_utils = None
    saved = [(obj, name, getattr(obj, name)) for obj, name in
             ((gguf_utils, "tqdm"), (gguf, "GGUFReader"), (gguf, "get_tensor_name_map")) if hasattr(obj, name)]
    readers: dict[str, Any] = {}
    reader_cls, name_map = getattr(gguf, "GGUFReader", None), getattr(gguf, "get_tensor_name_map", None)

    def reader(path: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return reader_cls(path, *args, **kwargs)
        key = str(Path(path).resolve())
        if key not in readers:
            readers[key] = reader_cls(path)
        return readers[key]

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    for obj, name, _ in saved:
        setattr(obj, name, {"tqdm": lambda items, *_, **__: items, "GGUFReader": reader,
                            "get_tensor_name_map": functools.lru_cache(maxsize=None)(name_map)}[name])
    try:
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
        if enabled:
            hf_logging.enable_progress_bar()


def converted_dir(gguf: Path) -> Path:
    """Where the model converted from `gguf` is kept (safetensors, float32: exactly the dequantised weights):
    $DATAKIT_CACHE/models/<file name>-<digest of its path, size and time>."""
    stat = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "models" / f"{gguf.stem}-{digest}"


def load_converted(gguf: Path) -> tuple[Any, Any]:
    """(tokenizer, model) for a GGUF: from the converted copy when there is one (~5 s for SmolLM2 here), else
    converted (~16 s) and the copy written for next time (atomically: a temporary folder renamed into place, so a
    second process or a kill at any instant leaves either a whole copy or none)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = converted_dir(gguf)
    if (target / "config.json").is_file():
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(target))
            return tokenizer, AutoModelForCausalLM.from_pretrained(str(target), dtype=torch.float32)
        except Exception:  # noqa: BLE001 - a damaged copy (a killed writer leaves none): convert again
            shutil.rmtree(target, ignore_errors=True)
    with gguf_loading():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # the weights are plain float32 once dequantised: saved (and later loaded) as an ordinary model
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            with contextlib.suppress(OSError):  # another process got there first: its copy is as good
                os.rename(tmp, target)
    except OSError:  # a read-only or full cache: the model still runs, converted again next time
        pass
    return tokenizer, model


def converted_folder(gguf: Path) -> Path:
    """The folder of the converted copy of `gguf` (config, safetensors, tokenizer), converted now if it is not
    there yet; loads as `from_pretrained(folder)` with any Auto class (AutoModel takes the base model)."""
    target = converted_dir(gguf)
    if not (target / "config.json").is_file():
        load_converted(gguf)
    if not (target / "config.json").is_file():  # a read-only or full cache: nothing could be kept
        raise OSError(f"{gguf}: could not keep its converted copy in {target.parent} (set DATAKIT_CACHE to a "
                      f"writable folder)")
    return target
