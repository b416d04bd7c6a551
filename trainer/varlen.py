"""Packed sequences with variable-length attention for decoders: no padding at all.

A step side's texts are concatenated into one row (`input_ids` [1, T]); `position_ids` restart at 0 for each text
and `cu_seqlens` marks where texts start. The backbone runs with the attention implementation registered here
(`embedkit_varlen`): given `cu_seq_lens_q`, each text attends bidirectionally to itself only, through
`torch.nn.attention.varlen.varlen_attn` (flash attention, CUDA, bf16/fp16); without them (padded batches:
evaluation, the probes) it is transformers' sdpa path with sdpa's masks. Where the kernel cannot run (CPU,
fp32 activations) the packed path computes the same attention text by text with sdpa: correct, not fast (the
tests use it; training on the CPU uses length-grouped micro-batches instead, `trainer/packing.py`).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

NAME = "embedkit_varlen"
log = logging.getLogger(__name__)
_warned: set[str] = set()


def _once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
              **kwargs):
    """transformers attention interface: query [1, H, T, D], key/value [1, Hkv, T, D] -> ([1, T, H, D], None)."""
    cu = kwargs.pop("cu_seq_lens_q", None)
    if cu is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    max_len = int(kwargs.get("max_length_q") or 0)
    gqa = query.shape[1] != key.shape[1]
    if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16):
        try:
            from torch.nn.attention.varlen import varlen_attn

            out = varlen_attn(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1), cu, cu,
                              max_len, max_len, scale=scaling, enable_gqa=gqa)
            return out.unsqueeze(0), None
        except (ImportError, RuntimeError, NotImplementedError) as exc:
            _once(f"varlen attention kernel unavailable ({type(exc).__name__}: {str(exc)[:120]}); packed texts "
                  "attend text by text through sdpa instead")
    else:
        _once("packed texts attend text by text through sdpa: the varlen kernel needs CUDA and bf16/fp16 "
              "activations (on a GPU: mixed_precision bf16, or model.varlen: false for micro-batches)")
    bounds = cu.tolist()
    parts = [F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], scale=scaling,
                                            enable_gqa=gqa)
             for s, e in zip(bounds[:-1], bounds[1:])]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def register() -> str:
    """Register the attention function, with sdpa's mask function for the padded calls; returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    return NAME


def pack(ids: list[list[int]]) -> dict[str, torch.Tensor | int]:
    """Token id lists as one packed row: input_ids and position_ids [1, T], cu_seqlens [n + 1] (int32)."""
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.int64)
    flat = torch.tensor([t for x in ids for t in x], dtype=torch.int64).unsqueeze(0)
    starts = torch.cumsum(lengths, 0) - lengths
    positions = torch.arange(flat.shape[1]) - torch.repeat_interleave(starts, lengths)
    cu = torch.zeros(len(ids) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lengths, 0)
    return {"input_ids": flat, "position_ids": positions.unsqueeze(0), "cu_seqlens": cu,
            "max_len": int(lengths.max()) if len(ids) else 0}


def pool_packed(hidden: torch.Tensor, cu: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool the token states of packed texts ([1, T, H]) per text: mean, last or first (cls) token."""
    states = hidden[0]
    cu = cu.to(states.device, torch.int64)
    if mode == "last":
        return states[cu[1:] - 1]
    if mode == "cls":
        return states[cu[:-1]]
    lengths = cu[1:] - cu[:-1]
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=states.device), lengths)
    sums = torch.zeros(len(lengths), states.shape[-1], dtype=states.dtype, device=states.device)
    return sums.index_add_(0, segment, states) / lengths.clamp(min=1).unsqueeze(-1).to(states.dtype)
