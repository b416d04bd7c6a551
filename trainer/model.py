"""Embedding model: any Hugging Face encoder or decoder, decoders switched to bidirectional attention,
pooled (mean over real tokens by default, instruction included) and L2-normalised.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from embedkit.configfile import ConfigError
from trainer.config import ModelConfig, Pooling, resolve_name

log = logging.getLogger(__name__)
DECODER_TYPES = {"qwen2", "qwen3", "llama", "mistral", "gemma", "gemma2", "gemma3", "gemma3_text", "phi3", "qwen2_moe"}


def is_decoder(config) -> bool:
    archs = getattr(config, "architectures", None) or []
    return config.model_type in DECODER_TYPES or any(a.endswith("ForCausalLM") for a in archs)


def make_bidirectional(model: nn.Module) -> int:
    """Turn off causal masking everywhere (config and every attention module); returns modules changed.

    transformers >= 5.2 reads `config.is_causal`; older versions read each attention module's `is_causal`.
    The padding mask still applies. `tests/test_trainer_model.py` checks that a later token changes an
    earlier token's output, because this has broken silently across transformers releases elsewhere.
    """
    changed = 0
    for cfg in {id(c): c for c in (model.config, getattr(model.config, "text_config", None)) if c is not None}.values():
        cfg.is_causal = False
    for module in model.modules():
        if hasattr(module, "is_causal"):
            module.is_causal = False
            changed += 1
    return changed


_DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout", "hidden_dropout",
                 "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "classifier_dropout")


class CausalAttentionError(RuntimeError):
    """A decoder meant to be bidirectional still attends causally (a transformers release changed how)."""


@torch.no_grad()
def check_bidirectional(backbone: nn.Module, device: torch.device) -> None:
    """Probe a decoder made bidirectional, so a transformers release that stops honouring it fails loudly
    instead of training a causal model: in a padded batch of two token sequences, where the second extends
    the first, a later token must change the first token's state, and the padding must not change the shorter
    sequence's states."""
    vocab = int(getattr(backbone.config, "vocab_size", 0) or 64)
    ids = [(7 + 13 * i) % max(vocab - 1, 2) + 1 for i in range(12)]
    short, long = ids[:6], ids
    pad = [0] * (len(long) - len(short))
    batch = {"input_ids": torch.tensor([short + pad, long], device=device),
             "attention_mask": torch.tensor([[1] * len(short) + pad, [1] * len(long)], device=device)}
    was_training = backbone.training
    backbone.eval()
    try:
        both = backbone(**batch, use_cache=False).last_hidden_state.float()
        single = backbone(input_ids=torch.tensor([short], device=device), use_cache=False).last_hidden_state.float()
    finally:
        backbone.train(was_training)
    if torch.allclose(both[0, 0], both[1, 0], atol=1e-5, rtol=1e-4):
        import transformers

        raise CausalAttentionError(
            f"transformers {transformers.__version__} kept {type(backbone).__name__} causal after it was made "
            "bidirectional (a later token does not change the first token's state); use a transformers release "
            "the trainer supports (pyproject.toml), or report the new one")
    if not torch.allclose(both[0, : len(short)], single[0], atol=5e-2, rtol=5e-2):
        raise CausalAttentionError(f"{type(backbone).__name__}: padding changes the states of real tokens under "
                                   "bidirectional attention (the attention mask is not applied)")


def freeze_unused(backbone: nn.Module, device: torch.device) -> list[str]:
    """Freeze the parameters that the token states never depend on (BERT's pooler: we pool the token states
    ourselves), found by walking the autograd graph of a probe forward (no backward, no gradient memory);
    return their names. DDP would otherwise wait for their gradients and fail ("parameters that were not used
    in producing loss")."""
    ids = torch.tensor([[5, 6, 7, 8]], device=device)
    kw = {"use_cache": False} if is_decoder(backbone.config) else {}
    with torch.enable_grad():
        out = backbone(input_ids=ids, attention_mask=torch.ones_like(ids), **kw).last_hidden_state
    used, seen, stack = set(), set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):  # AccumulateGrad: a leaf parameter
            used.add(id(fn.variable))
        stack.extend(f for f, _ in fn.next_functions)
    frozen = []
    for name, param in backbone.named_parameters():
        if param.requires_grad and id(param) not in used:
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def _wants_varlen(cfg: ModelConfig, hf_config, device: torch.device, bidirectional: bool) -> bool:
    """Whether training steps run packed texts with varlen attention (see ModelConfig.varlen)."""
    if cfg.varlen is False or not cfg.padding_free:
        return False
    why = None
    if not (is_decoder(hf_config) and bidirectional):
        why = "it is not a bidirectional decoder"
    elif cfg.attn_implementation != "sdpa":
        why = f"attn_implementation is {cfg.attn_implementation!r} (the varlen path replaces sdpa)"
    elif cfg.lora:
        why = "LoRA is on"
    if why:
        if cfg.varlen:
            raise ValueError(f"model.varlen: true, but {why}")
        if device.type == "cuda":
            log.warning(f"no varlen attention for {cfg.name_or_path} ({why}): training steps use "
                        "length-grouped micro-batches")
        return False
    return bool(cfg.varlen) or device.type == "cuda"


@torch.no_grad()
def packed_matches_padded(model: "EmbeddingModel") -> bool:
    """Probe the packed path once: two texts of different lengths give the same embeddings packed as padded
    (under bf16 autocast on CUDA, as in training; cosine >= 0.99)."""
    from trainer.varlen import pack

    ids = [[(5 + 11 * i) % 90 + 3 for i in range(n)] for n in (9, 4)]
    padded = model.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
    packed = pack(ids)
    dev = model.device
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            a = model(padded["input_ids"].to(dev), padded["attention_mask"].to(dev))
            b = model(**{k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in packed.items()})
    except (RuntimeError, NotImplementedError, ValueError) as exc:
        log.warning(f"packed forward failed ({type(exc).__name__}: {str(exc)[:200]})")
        return False
    finally:
        model.train(was_training)
    return bool((a * b).sum(-1).min() >= 0.99)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model", "merges.txt")
_PROBE = ("The quick brown fox jumps over the lazy dog. Where is my card? I feel happy today, and the committee "
          "approved the new budget for science, sports and health.")


class BrokenTokenizer(ValueError):
    """A model's tokenizer is missing, or maps most words to its unknown token (scores would be meaningless)."""


def check_tokenizer(tokenizer, where: str, folder: str | None = None, texts: list[str] | None = None,
                    probe: bool = True) -> float:
    """Fail when a model folder has no tokenizer files, or (`probe`) when the tokenizer maps more than half of the
    tokens of a probe (plain English, plus `texts`) to its unknown token; returns that share."""
    from pathlib import Path

    if folder is not None and Path(folder).is_dir() and not any((Path(folder) / f).exists() for f in TOKENIZER_FILES):
        raise BrokenTokenizer(f"{where}: {folder} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:5])}, ...); "
                              "copy the tokenizer the model was trained with into it")
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not probe:
        return 0.0  # byte-level tokenizers have no unknown token: every text encodes
    ids = [i for t in [_PROBE, *(texts or [])[:50]] for i in tokenizer(t, add_special_tokens=False)["input_ids"]]
    share = sum(i == unk for i in ids) / max(len(ids), 1)
    if share > 0.5:
        raise BrokenTokenizer(f"{where}: its tokenizer maps {share:.0%} of the tokens of plain text to "
                              f"{tokenizer.unk_token!r} (vocabulary of {len(tokenizer)} entries); the tokenizer files "
                              "are missing or do not belong to this model")
    return share


class UnfitConfig(ConfigError):
    """A training config that cannot run on this model (named by its key); found before any step trains."""


def check_padding(tokenizer, hf_config, cfg: ModelConfig) -> None:
    """Give the tokenizer a pad token and padding side the model can train with, or fail naming the key:
    a tokenizer without a pad token (most decoders) pads with `model.pad_token`, else its eos, else its unk
    token, and with none of them there is nothing to pad with; left padding shifts every position of a model
    with absolute position embeddings (BERT-style encoders), so only decoders with rotary positions take it."""
    if cfg.pad_token is not None:
        if cfg.pad_token not in tokenizer.get_vocab():
            raise UnfitConfig(f"model.pad_token: {cfg.pad_token!r} is not in the vocabulary of {cfg.name_or_path}")
        tokenizer.pad_token = cfg.pad_token
    elif tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise UnfitConfig(f"model.pad_token: the tokenizer of {cfg.name_or_path} has no pad, eos or unk token; "
                              "name a token of its vocabulary to pad with")
        tokenizer.pad_token = fallback
    if cfg.padding_side is not None:
        tokenizer.padding_side = cfg.padding_side
    absolute = getattr(hf_config, "position_embedding_type", None) == "absolute" or \
        (hasattr(hf_config, "max_position_embeddings") and not is_decoder(hf_config)
         and getattr(hf_config, "rope_theta", None) is None and "rope" not in str(getattr(hf_config, "rope_scaling", "")))
    if tokenizer.padding_side == "left" and absolute:
        raise UnfitConfig(f"model.padding_side: left padding moves every token of {cfg.name_or_path} to another "
                          "position (it has absolute position embeddings); use padding_side: right")


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: Pooling = "mean") -> torch.Tensor:
    """Pool token states over real tokens; correct for left and right padding."""
    mask = mask.to(hidden.dtype)
    if mode == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    if mode == "last":  # the last real token, wherever the padding is
        idx = (positions * mask).argmax(1)
    else:  # cls: the first real token
        idx = torch.where(mask.bool(), positions, mask.shape[1]).argmin(1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


def weight_dtype(name: str, device: torch.device, training: bool) -> torch.dtype:
    """The dtype weights load in. Training keeps fp32 master weights whatever the device: AdamW updating bf16
    weights directly loses most small updates (one step at lr 3e-5 left 69.5% of a 0.5B model's weights
    unchanged); the forward runs under bf16 autocast instead (`mixed_precision`)."""
    if name == "auto":
        return torch.float32 if training or device.type != "cuda" else torch.bfloat16
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


class EmbeddingModel(nn.Module):
    def __init__(self, cfg: ModelConfig, device: str | torch.device | None = None, training: bool = False):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.cfg = cfg
        name, gguf_file = resolve_name(cfg.name_or_path, cfg.gguf_file)
        if gguf_file and (Path(name) / gguf_file).is_file():  # dequantised once and kept (embedkit.gguf)
            from embedkit.gguf import converted_folder

            try:
                name, gguf_file = str(converted_folder(Path(name) / gguf_file)), None
            except OSError as exc:  # a read-only or full cache: dequantised again at every load, as before
                log.warning("%s", exc)
        kw = {"gguf_file": gguf_file} if gguf_file else {}  # a GGUF on the hub: transformers fetches it
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer) if cfg.tokenizer else \
            AutoTokenizer.from_pretrained(name, **kw)
        # files only: a model trained on other text (a test's toy vocabulary) may not know English; `trainer eval` probes
        check_tokenizer(self.tokenizer, f"model {cfg.name_or_path}", None if gguf_file else (cfg.tokenizer or name),
                        probe=False)
        hf_config = AutoConfig.from_pretrained(name, **kw)
        check_padding(self.tokenizer, hf_config, cfg)
        if cfg.dropout is not None:
            for key in _DROPOUT_KEYS:
                if hasattr(hf_config, key):
                    setattr(hf_config, key, cfg.dropout)
        device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = weight_dtype(cfg.dtype, device, training)
        bidirectional = cfg.bidirectional if cfg.bidirectional is not None else is_decoder(hf_config)
        self.varlen = _wants_varlen(cfg, hf_config, device, bidirectional)
        attn = cfg.attn_implementation
        if self.varlen:
            from trainer import varlen

            attn = varlen.register()  # sdpa for padded batches, varlen attention for packed texts
        self.backbone = AutoModel.from_pretrained(name, config=hf_config, dtype=dtype, attn_implementation=attn, **kw)
        if gguf_file:  # transformers dequantised the GGUF weights: it is a plain model from here on
            self.backbone.hf_quantizer = None
            self.backbone.is_quantized = False
            self.backbone.config.__dict__.pop("quantization_config", None)
        self.decoder = is_decoder(self.backbone.config)
        # FSDP's transformer-based wrapping reads the wrapped model's `_no_split_modules`: without them only the
        # root is sharded (every layer's weights gathered at once) and activation checkpointing wraps nothing
        self._no_split_modules = list(getattr(self.backbone, "_no_split_modules", None) or [])
        if bidirectional:
            make_bidirectional(self.backbone)
            check_bidirectional(self.backbone.to(device), device)
        self.frozen = freeze_unused(self.backbone.to(device), device) if training else []
        if cfg.gradient_checkpointing:
            self.backbone.gradient_checkpointing_enable()
        if cfg.lora:
            from peft import LoraConfig, get_peft_model

            self.backbone = get_peft_model(self.backbone, LoraConfig(**cfg.lora))
        self.to(device)
        if self.varlen and cfg.varlen is None and not packed_matches_padded(self):
            self.varlen = False
            log.warning("packed texts with varlen attention did not give the padded path's embeddings on this "
                        "machine: training steps use length-grouped micro-batches instead")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                max_len: int = 0) -> torch.Tensor:
        """L2-normalised embeddings of a padded batch, or of packed texts (`cu_seqlens`, trainer/varlen.py)."""
        kw = {"use_cache": False} if self.decoder else {}  # no KV cache: it costs memory and breaks recomputation
        if cu_seqlens is not None:
            from trainer.varlen import pool_packed

            hidden = self.backbone(input_ids=input_ids, position_ids=position_ids, cu_seq_lens_q=cu_seqlens,
                                   cu_seq_lens_k=cu_seqlens, max_length_q=max_len, max_length_k=max_len,
                                   **kw).last_hidden_state
            return F.normalize(pool_packed(hidden, cu_seqlens, self.cfg.pooling).float(), dim=-1)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state
        return F.normalize(pool(hidden, attention_mask, self.cfg.pooling).float(), dim=-1)

    @torch.no_grad()
    def encode(self, texts: list[str], prompt: str = "", max_length: int = 512, batch_size: int = 32) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            out.append(self(**self.tokenize([prompt + t for t in texts[i: i + batch_size]], max_length)))
        return torch.cat(out) if out else torch.zeros(0)
