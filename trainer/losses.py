"""The three task losses of the report, on L2-normalised embeddings (formulas: shared/QZHOU-DETAILS.md).

- retrieval: InfoNCE over the positive, every in-batch document (other records' positives and all hard
  negatives) and every other query (query-query negatives); documents and queries are gathered across
  processes with an autograd-aware all_gather;
- pair: CoSENT over ordinal scores, over the pairs of every process (the report's batch of 768 is global);
- classification: InfoNCE with anchor / same-label positive / other-label negatives, every candidate that
  shares the anchor's label masked out of the denominator; candidates and labels gathered like retrieval's.

Under DDP each process's gradient is averaged: a loss that is the mean over local rows with gathered
candidates (InfoNCE) or the same global value on every process (CoSENT) then gives the gradient of the whole
global batch on one process (`tests/dist_check.py`).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

NEG_INF = -1e4  # large enough to vanish under exp at temperature 0.02, small enough for bf16


def gather(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All processes' rows (autograd-aware all_gather: each process's embeddings receive the gradient of
    every process's loss, so DDP's averaged gradient equals the single-process gradient of the global batch);
    returns (rows, offset of this process's rows)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    return _GatherRows.apply(x), dist.get_rank() * x.shape[0]


class _GatherRows(torch.autograd.Function):
    """all_gather of equal-sized row blocks whose backward sums the gradient every process computed for the
    gathered rows (one all_reduce) and keeps this process's block. (torch.distributed.nn.functional.all_gather
    does the same through an all_to_all, and is deprecated.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.rows, ctx.rank = x.shape[0], dist.get_rank()
        return gather_values(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def info_nce(q: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None, tau: float = 0.02,
             query_negatives: bool = True, distributed: bool = True) -> torch.Tensor:
    """q, pos: (B, d); neg: (B, K, d) or None. Mean InfoNCE over the local queries."""
    b = q.shape[0]
    neg_flat = neg.reshape(-1, neg.shape[-1]) if neg is not None and neg.numel() else None
    if distributed:
        all_pos, offset = gather(pos)
        all_neg = gather(neg_flat)[0] if neg_flat is not None else None
        all_q = gather(q)[0]
    else:
        all_pos, offset, all_neg, all_q = pos, 0, neg_flat, q
    docs = all_pos if all_neg is None else torch.cat([all_pos, all_neg])
    logits = q @ docs.T / tau
    target = torch.arange(b, device=q.device) + offset
    if query_negatives:
        qq = q @ all_q.T / tau
        self_mask = torch.zeros_like(qq, dtype=torch.bool)
        self_mask[torch.arange(b), target] = True
        logits = torch.cat([logits, qq.masked_fill(self_mask, NEG_INF)], dim=1)
    return F.cross_entropy(logits, target)


def cosent(a: torch.Tensor, b: torch.Tensor, scores: torch.Tensor, scale: float = 50.0,
           distributed: bool = True) -> torch.Tensor:
    """log(1 + sum over pairs (i, j) with score_i > score_j of exp(scale * (cos_j - cos_i))), over the pairs of
    every process."""
    if distributed:
        a, b, scores = gather(a)[0], gather(b)[0], gather_values(scores)
    cos = (a * b).sum(-1) * scale
    diff = cos[None, :] - cos[:, None]  # [i, j] = cos_j - cos_i
    valid = scores[:, None] > scores[None, :]
    diff = diff.masked_fill(~valid, NEG_INF)
    return torch.logsumexp(torch.cat([torch.zeros(1, device=a.device, dtype=diff.dtype), diff.flatten()]), 0)


def gather_values(x: torch.Tensor) -> torch.Tensor:
    """All processes' values of a tensor, without gradient (scores, labels; `gather` adds one)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    x = x.contiguous()  # (the outputs take x's layout; collectives want dense rows)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts)


def masked_info_nce(anchor: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None, labels: torch.Tensor,
                    neg_labels: torch.Tensor | None, tau: float = 0.02, distributed: bool = True) -> torch.Tensor:
    """Classification InfoNCE. anchor, pos: (B, d), labels (B,); neg: (B, K, d), neg_labels (B, K).

    Candidates: every positive, every negative and every other anchor of the (global) batch; for anchor i,
    each candidate with label_i other than its own positive is masked out (so is anchor i itself). Mean over
    the local anchors.
    """
    b = anchor.shape[0]
    neg_flat = neg.reshape(-1, neg.shape[-1]) if neg is not None and neg.numel() else None
    neg_lab = neg_labels.reshape(-1) if neg_flat is not None else None
    if distributed:
        all_pos, offset = gather(pos)
        all_anchor, all_labels = gather(anchor)[0], gather_values(labels)
        all_neg = gather(neg_flat)[0] if neg_flat is not None else None
        all_neg_lab = gather_values(neg_lab) if neg_lab is not None else None
    else:
        all_pos, offset, all_anchor, all_labels, all_neg, all_neg_lab = pos, 0, anchor, labels, neg_flat, neg_lab
    cands = [all_pos] + ([all_neg] if all_neg is not None else []) + [all_anchor]
    cand_labels = [all_labels] + ([all_neg_lab] if all_neg_lab is not None else []) + [all_labels]
    cands_t, labels_t = torch.cat(cands), torch.cat(cand_labels)
    logits = anchor @ cands_t.T / tau
    rows = torch.arange(b, device=anchor.device)
    target = rows + offset
    same = labels[:, None] == labels_t[None, :]
    same[rows, target] = False  # the anchor's own positive stays
    same[rows, cands_t.shape[0] - all_anchor.shape[0] + target] = True  # the anchor itself is never a candidate
    return F.cross_entropy(logits.masked_fill(same, NEG_INF), target)
