"""Padding-free steps: a step's texts in length-grouped micro-batches, each padded only to its own longest text.

The texts of a step (queries, or positives with their negatives) are tokenized once without padding, sorted by
length and cut into chunks where the cut points minimise the padded positions plus a fixed cost per extra
forward call (`overhead` tokens: small on a CPU, larger on a GPU where a call has a launch cost). Each chunk
runs through the model; the embeddings are put back in the texts' order, so pooling, the losses, GradCache and
the gather across processes see exactly what the padded path gives them.

This works for every model and attention implementation (encoders, decoders, left or right padding: the
model's attention mask and, for rotary decoders, relative positions make a text's states independent of the
padding around it). Decoders on CUDA go further: their texts are packed into one row and attend through a
variable-length attention kernel (`packed=True`, trainer/varlen.py), with no padding at all.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Encoded:
    """A step side's texts, ready for the model: chunks of rows, and how to restore the texts' order."""

    chunks: list[dict[str, torch.Tensor]]
    order: np.ndarray  # the text index of each row of the concatenated chunks
    real: int  # real tokens
    positions: int  # positions computed (real + padding)
    lengths: list[np.ndarray] = field(default_factory=list)  # length-grouped chunks: each row's real length
    left: bool = False  # padded on the left

    def split_to(self, count: int) -> None:
        """Split chunks by rows until there are `count`, each cut to its own longest text. Every process must
        make the same number of forward calls in a step (FSDP gathers the weights in each, DDP broadcasts
        buffers), but each plans its chunks from its own texts: the train loop agrees on the largest count.
        The rows keep their place, so `order` and the embeddings stay the same."""
        if len(self.chunks) < count and len(self.lengths) != len(self.chunks):
            raise ValueError(f"another process made {count} forward calls for this step, this one "
                             f"{len(self.chunks)} of packed or padded texts, which cannot be split")
        while len(self.chunks) < count:
            i = max(range(len(self.chunks)), key=lambda c: len(self.lengths[c]))
            lens, chunk = self.lengths[i], self.chunks[i]
            if len(lens) < 2:
                raise ValueError(f"cannot make {count} chunks of {sum(len(x) for x in self.lengths)} texts")
            half, width = len(lens) // 2, chunk["input_ids"].shape[1]
            parts = []
            for rows in (slice(0, half), slice(half, None)):  # rows are sorted longest first
                w = int(lens[rows].max())
                cols = slice(width - w, width) if self.left else slice(0, w)
                parts.append({k: v[rows, cols] for k, v in chunk.items()})
            self.positions -= len(lens) * width - sum(p["input_ids"].numel() for p in parts)
            self.chunks[i:i + 1] = parts
            self.lengths[i:i + 1] = [lens[:half], lens[half:]]

    def restore(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Embeddings of the concatenated chunks, back in the texts' order."""
        if np.array_equal(self.order, np.arange(len(self.order))):
            return embeddings
        inverse = np.empty_like(self.order)
        inverse[self.order] = np.arange(len(self.order))
        return embeddings[torch.as_tensor(inverse, device=embeddings.device)]


def plan_chunks(lengths: np.ndarray, overhead: float) -> list[np.ndarray]:
    """Cut texts into runs of similar length: sort longest first, then choose the cut points minimising
    sum(chunk rows x chunk's longest) + overhead x chunks (exact, by dynamic programming over the sorted
    order). Returns the text indices of each chunk."""
    n = len(lengths)
    if n == 0:
        return []
    order = np.argsort(-np.asarray(lengths), kind="stable")
    sl = np.asarray(lengths, dtype=np.float64)[order]
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    starts = np.arange(n)
    for j in range(1, n + 1):
        # a chunk [i, j) costs (j - i) x sl[i] (its first text is its longest) plus the call overhead
        costs = best[:j] + (j - starts[:j]) * sl[:j] + overhead
        i = int(np.argmin(costs))
        best[j], cut[j] = costs[i], i
    bounds, j = [], n
    while j > 0:
        bounds.append((int(cut[j]), j))
        j = int(cut[j])
    return [order[i:j] for i, j in reversed(bounds)]


def _to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """To the device; through pinned memory on CUDA, so the copy overlaps the step being computed."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def encode_texts(tokenizer, texts: list[str], max_length: int, device: torch.device, padding_free: bool,
                 overhead: float, rows_per_chunk: int = 0, packed: bool = False) -> Encoded:
    """Tokenize a step side. Padded: one chunk (today's path) or row slices of `rows_per_chunk` (GradCache).
    Padding-free: length-sorted chunks, cut by `plan_chunks`, or by `rows_per_chunk` rows under GradCache
    (whose chunks then hold texts of similar length); `packed`: the texts concatenated into one row (or one per
    `rows_per_chunk` texts) for varlen attention (trainer/varlen.py), no padding at all."""
    if not padding_free:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        n = batch["input_ids"].shape[0]
        step = rows_per_chunk or max(n, 1)
        chunks = [{k: _to(v[i: i + step], device) for k, v in batch.items()}
                  for i in range(0, n, step)]
        return Encoded(chunks, np.arange(n), int(batch["attention_mask"].sum()), int(batch["attention_mask"].numel()))
    ids = tokenizer(texts, truncation=True, max_length=max_length, padding=False)["input_ids"]
    lengths = np.array([len(x) for x in ids])
    if packed:
        from trainer.varlen import pack

        step = rows_per_chunk or max(len(ids), 1)
        chunks = [{k: (_to(v, device) if torch.is_tensor(v) else v) for k, v in pack(ids[i: i + step]).items()}
                  for i in range(0, len(ids), step)]
        return Encoded(chunks, np.arange(len(ids)), int(lengths.sum()), int(lengths.sum()))
    if rows_per_chunk:
        order = np.argsort(-lengths, kind="stable")
        groups = [order[i: i + rows_per_chunk] for i in range(0, len(order), rows_per_chunk)]
    else:
        groups = plan_chunks(lengths, overhead)
    chunks, positions = [], 0
    for group in groups:
        padded = tokenizer.pad({"input_ids": [ids[i] for i in group]}, return_tensors="pt")
        chunks.append({k: _to(padded[k], device) for k in ("input_ids", "attention_mask")})
        positions += int(padded["input_ids"].numel())
    order = np.concatenate(groups) if groups else np.zeros(0, dtype=np.int64)
    return Encoded(chunks, order, int(lengths.sum()), positions, [lengths[g] for g in groups],
                   tokenizer.padding_side == "left")


def default_overhead(device: torch.device) -> float:
    """The cost of one more forward call, in token positions. On the CPU 128 measured best (a 4-layer Qwen2,
    benchmarks/train_throughput.py: pad_fraction 0.087, 1.49x the padded path; 16 gave 0.022 but only 1.20x,
    small chunks run slower per token); on a GPU, where a call also pays kernel launches and small chunks
    leave the device idle, 512 is a guess not yet measured (benchmarks/RESULTS.md)."""
    return 512.0 if device.type == "cuda" else 128.0
