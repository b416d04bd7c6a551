"""One step's loss: a batch tokenized (`encode_batch`), embedded, and scored by its kind's loss (InfoNCE with
query-query negatives, CoSENT, masked InfoNCE); `grad_cache_step` gives the same gradient in chunk-sized memory."""
from __future__ import annotations

import contextlib

import torch

from trainer.config import TrainConfig
from trainer.data import Batch
from trainer.losses import cosent, info_nce, masked_info_nce
from trainer.packing import Encoded, default_overhead, encode_texts


def encode_batch(model, batch: Batch, cfg: TrainConfig, rows_per_chunk: int = 0) -> tuple[Encoded, Encoded]:
    """The batch's query side and document side (positives, then negatives), tokenized into chunks."""
    d = cfg.data
    docs = batch.docs + [n for negs in batch.negatives for n in negs]
    free, overhead = cfg.model.padding_free, default_overhead(model.device)
    packed = free and getattr(model, "varlen", False)
    q = encode_texts(model.tokenizer, batch.queries, d.query_max_length, model.device, free, overhead, rows_per_chunk,
                     packed)
    p = encode_texts(model.tokenizer, docs, d.doc_max_length if batch.kind == "retrieval" else d.query_max_length,
                     model.device, free, overhead, rows_per_chunk, packed)
    return q, p


def embed_encoded(model, enc: Encoded) -> torch.Tensor:
    return enc.restore(torch.cat([model(**chunk) for chunk in enc.chunks]))


def batch_loss(model, batch: Batch, cfg: TrainConfig, prepared=None) -> tuple[torch.Tensor, int, int]:
    """The loss of one batch by its kind, the real tokens it encoded and the positions it computed."""
    q, p = prepared or encode_batch(model, batch, cfg)
    return task_loss(embed_encoded(model, q), embed_encoded(model, p), batch, cfg), q.real + p.real, q.positions + p.positions


def task_loss(qe: torch.Tensor, de: torch.Tensor, batch: Batch, cfg: TrainConfig) -> torch.Tensor:
    """The batch's loss from its query-side and document-side embeddings."""
    b = len(batch.queries)
    pos, neg = de[:b], de[b:].reshape(b, -1, de.shape[-1]) if de.shape[0] > b else None
    if batch.kind == "retrieval":
        return info_nce(qe, pos, neg, cfg.tau, cfg.query_negatives)
    if batch.kind == "pair":
        return cosent(qe, pos, torch.tensor(batch.scores, dtype=torch.float32, device=qe.device), cfg.cosent_scale)
    labels = torch.tensor(batch.labels, device=qe.device)
    neg_labels = torch.tensor(batch.negative_labels, device=qe.device) if neg is not None else None
    return masked_info_nce(qe, pos, neg, labels, neg_labels, cfg.tau)


def grad_cache_step(model, batch: Batch, cfg: TrainConfig, backward, no_sync=None,
                    prepared=None) -> tuple[torch.Tensor, int, int]:
    """GradCache (Gao et al. 2021): embed in chunks without a graph, take the loss and its gradient with
    respect to the embeddings, then re-run each chunk with a graph (same RNG, so the same dropout) and push
    the cached gradient through it. Memory is that of one chunk; the gradient is the full batch's.
    Padding-free, each chunk holds texts of similar length, padded to its own longest.

    `no_sync()` (accelerate's, under DDP/FSDP) wraps every chunk's backward but the last, so gradients are
    reduced across processes once per step, not once per chunk."""
    q, p = prepared or encode_batch(model, batch, cfg, rows_per_chunk=cfg.grad_cache_chunk)
    raws, states = [], []
    for enc in (q, p):
        parts, rng = [], []
        with torch.no_grad():
            for chunk in enc.chunks:
                rng.append((torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None))
                parts.append(model(**chunk))
        raws.append(torch.cat(parts).detach().requires_grad_())
        states.append(rng)
    loss = task_loss(q.restore(raws[0]), p.restore(raws[1]), batch, cfg)
    loss.backward()
    chunks = []
    for enc, raw, rng in zip((q, p), raws, states):
        offset = 0
        for chunk, state in zip(enc.chunks, rng):
            rows = len(chunk["cu_seqlens"]) - 1 if "cu_seqlens" in chunk else chunk["input_ids"].shape[0]
            chunks.append((chunk, state, raw.grad[offset: offset + rows]))
            offset += rows
    for n, (chunk, state, grad) in enumerate(chunks):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state_all(state[1])
        last = n == len(chunks) - 1
        with (no_sync() if no_sync is not None and not last else contextlib.nullcontext()):
            out = model(**chunk)
            backward(torch.dot(out.flatten(), grad.flatten()))
    return loss.detach(), q.real + p.real, q.positions + p.positions
