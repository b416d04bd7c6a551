"""GPU memory budget of a training setting, per component, per GPU (an estimate, printed as a table).

    python benchmarks/memory_budget.py                                   # the report's setting: qzhou-7b.yaml
    python benchmarks/memory_budget.py --size 1.5B --gpus 1 --batch 32 --grad-cache 32

Components, per GPU, for a Qwen2 model of the given size:
- weights fp32 (master weights: `mixed_precision: bf16` autocasts the forward, AdamW updates fp32), gradients
  fp32, AdamW moments 2 x fp32; all three sharded over the GPUs under FSDP FULL_SHARD / ZeRO-3;
- the bf16 copy of one layer's weights that FSDP gathers (two in flight with prefetch);
- activations: with gradient checkpointing, each layer's bf16 input kept for every text of the step (or of one
  GradCache chunk) plus one layer's full activations during its recompute; without it, every layer's.
  Per token and layer, a layer's activations are taken as 2 bytes x (8 h + 4 i) (attention inputs and outputs,
  MLP gate/up/activation, norms; sdpa/flash attention keeps no score matrix), a round estimate;
- the logits of InfoNCE (queries x all gathered documents) and the embeddings, small.
Texts are counted at their maximum length (the worst case; padding-free steps compute fewer positions).
Measured on a GPU (issue #18's 7B run): batch 32 x 5 texts, 7B, gradient checkpointing, one GPU: 62 GiB.
"""
from __future__ import annotations

import argparse

SIZES = {  # Qwen2 configurations (hidden, layers, heads, kv heads, intermediate, vocab)
    "0.5B": (896, 24, 14, 2, 4864, 151_936),
    "1.5B": (1536, 28, 12, 2, 8960, 151_936),
    "7B": (3584, 28, 28, 4, 18944, 152_064),
}
GIB = 2**30


def parameters(size: str) -> tuple[int, int]:
    """(all parameters, parameters of one layer)."""
    h, layers, heads, kv, inter, vocab = SIZES[size]
    head = h // heads
    layer = h * h + 2 * h * kv * head + h * h + 3 * h * inter + 2 * h + (h + 2 * kv * head)  # attn, mlp, norms, biases
    return vocab * h + layers * layer + h, layer


def budget(size: str, gpus: int, batch: int, negatives: int, qlen: int, dlen: int, grad_ckpt: bool,
           grad_cache: int) -> list[tuple[str, float]]:
    h, layers, _, _, inter, _ = SIZES[size]
    total, layer = parameters(size)
    shard = 1 / gpus
    texts_q, texts_d = batch, batch * (1 + negatives)
    tokens = texts_q * qlen + texts_d * dlen
    if grad_cache:  # one chunk of the longest texts at a time
        tokens = min(grad_cache, texts_d) * dlen
    per_token_layer = 2 * (8 * h + 4 * inter)
    if grad_ckpt:
        acts = tokens * layers * 2 * h + tokens * per_token_layer
    else:
        acts = tokens * layers * per_token_layer
    gathered = batch * gpus
    rows = [
        ("weights fp32 (sharded)", 4 * total * shard),
        ("gradients fp32 (sharded)", 4 * total * shard),
        ("AdamW moments 2 x fp32 (sharded)", 8 * total * shard),
        ("gathered bf16 layers (2 in flight)", 2 * 2 * layer if gpus > 1 else 0),
        ("activations" + (" (checkpointed)" if grad_ckpt else "") + (f" (GradCache chunk {grad_cache})" if grad_cache else ""), acts),
        ("InfoNCE logits + embeddings", 4 * texts_q * (gathered * (1 + negatives) + gathered) + 4 * (texts_q + texts_d) * h),
    ]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="7B", choices=list(SIZES))
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32, help="queries per GPU")
    ap.add_argument("--negatives", type=int, default=4)
    ap.add_argument("--query-len", type=int, default=256)
    ap.add_argument("--doc-len", type=int, default=1536)
    ap.add_argument("--no-grad-ckpt", action="store_true")
    ap.add_argument("--grad-cache", type=int, default=0, help="GradCache chunk (texts); 0 = off")
    ap.add_argument("--gpu-gib", type=float, default=80.0)
    args = ap.parse_args()
    settings = [(args.grad_cache, not args.no_grad_ckpt)]
    if not args.grad_cache:  # also show what GradCache would give
        settings += [(c, not args.no_grad_ckpt) for c in (64, 16)]
    for chunk, ckpt in settings:
        rows = budget(args.size, args.gpus, args.batch, args.negatives, args.query_len, args.doc_len, ckpt, chunk)
        total = sum(v for _, v in rows)
        print(f"\nQwen2 {args.size}, {args.gpus} GPU(s), {args.batch} queries x (1 + {args.negatives}) per GPU, "
              f"lengths {args.query_len}/{args.doc_len}, gradient checkpointing {'on' if ckpt else 'off'}, "
              f"GradCache {'chunk ' + str(chunk) if chunk else 'off'}")
        print("| component | GiB per GPU |\n|---|---:|")
        for name, value in rows:
            print(f"| {name} | {value / GIB:.1f} |")
        verdict = "fits" if total / GIB <= args.gpu_gib * 0.9 else "does not fit"
        print(f"| **total** | **{total / GIB:.1f}** ({verdict} {args.gpu_gib:.0f} GiB with 10% headroom) |")


if __name__ == "__main__":
    main()
