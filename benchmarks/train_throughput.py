"""Training throughput: `trainer` against the sentence-transformers trainer (MultipleNegativesRankingLoss)
on the same Qwen2-architecture model (built from a config, random weights), batch and data.

Data: synthetic retrieval records (query, positive, 4 hard negatives) of varied lengths over a word-level
vocabulary. Every trainer gets the same batches in the same order (the corpus's first (steps + 2) x batch records,
consecutive groups of `batch`; sentence-transformers through a sequential batch sampler) and the same tokenizer.
Tokens/s counts real (non-padding) tokens of the timed steps, measured in both: the trainer's encoded batches,
and the attention masks sentence-transformers' loss receives. Each (size, trainer) runs in its own process,
`--reps` times, interleaved (ours, padded, ST, ours, ...): the table gives the median and the range.
Peak GPU memory from torch.cuda.max_memory_allocated.

    python benchmarks/train_throughput.py --sizes 0.5B,1.5B,7B --batch 32 --steps 30      (on a GPU)
    python benchmarks/train_throughput.py --sizes small,tiny --batch 8 --steps 6 --device cpu --reps 3  (the CPU table)
    python benchmarks/train_throughput.py --sizes tiny --batch 4 --steps 3 --device cpu   (smoke run)
    python benchmarks/train_throughput.py --prepare --workdir DIR   (the corpus only: for a GPU machine without
                                                                   datakit's stack; a later run reuses it)

Columns: the trainer padding-free (its default), the trainer padded (`model.padding_free: false`, or
`--padded` to run only that), and the sentence-transformers trainer; all in train mode. pad_fraction =
padded positions over all positions computed; the profile splits the trainer's step into its phases (with a
device sync between them on CUDA, so it slows the step a little).

Targets (issue #18), checked for every size but `tiny` (a 64-wide model is all per-call overhead): the
padding-free path's pad_fraction <= 0.10 and its median tokens/s >= 1.2x the padded path's. The script exits 1
when one is missed.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {  # Qwen2 configurations (hidden, layers, heads, kv heads, intermediate)
    "tiny": (64, 2, 4, 2, 128),
    "small": (256, 4, 4, 2, 1024),
    "0.5B": (896, 24, 14, 2, 4864),
    "1.5B": (1536, 28, 12, 2, 8960),
    "7B": (3584, 28, 28, 4, 18944),
}
VOCAB = 32_000


def make_model(folder: Path, size: str) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2Model

    hidden, layers, heads, kv, inter = SIZES[size]
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=inter, max_position_embeddings=4096,
                      architectures=["Qwen2ForCausalLM"], torch_dtype="bfloat16")
    with torch.device("meta"):
        Qwen2Model(cfg)  # validates the config cheaply
    Qwen2Model(cfg).to(torch.bfloat16).save_pretrained(folder)
    vocab = {f"w{i}": i for i in range(VOCAB - 2)} | {"<pad>": VOCAB - 2, "<unk>": VOCAB - 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # in a folder of its own: beside a Qwen2 config, AutoTokenizer would pick Qwen2's BPE tokenizer class
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>").save_pretrained(folder / "tok")


def make_corpus(folder: Path, n: int, seed: int = 0) -> None:
    """A datakit output folder of synthetic retrieval records (lengths vary, as in real corpora)."""
    from datakit.pipeline import build
    from datakit.recipe import load_recipe

    rng = random.Random(seed)

    def text(lo, hi):
        return " ".join(f"w{rng.randrange(VOCAB - 2)}" for _ in range(rng.randint(lo, hi)))

    rows = [{"query": text(8, 64), "pos": [text(32, 256)], "neg": [text(32, 256) for _ in range(4)]} for _ in range(n)]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "recipe.yaml").write_text("name: synth\nsources: [{name: synth, path: data.jsonl, adapter: retrieval, "
                                        "columns: {positive: pos, negatives: neg}}]\n")
    build(load_recipe(folder / "recipe.yaml"), folder / "out")


def fixed_batches(corpus: Path, batch: int, n: int) -> list[dict[str, list]]:
    """The first n x batch records of the corpus as n batches: what every trainer trains on, in this order."""
    from trainer.data import open_shards

    rows = open_shards(corpus)["retrieval"].slice(0, n * batch).select(["query", "positive", "negatives"]).to_pylist()
    if len(rows) < n * batch:
        raise SystemExit(f"the corpus has {len(rows)} records; {n * batch} needed")
    return [{k: [r[k] for r in rows[i * batch: (i + 1) * batch]] for k in ("query", "positive", "negatives")}
            for i in range(n)]


def run_ours(model_dir: Path, corpus: Path, batch: int, steps: int, device: str, grad_ckpt: bool,
             padded: bool = False) -> dict:
    import torch

    from trainer.data import Batch, DataConfig
    from trainer.model import EmbeddingModel, ModelConfig
    from trainer.config import StageConfig, TrainConfig
    from trainer.step_loss import embed_encoded, encode_batch, task_loss

    cfg = TrainConfig(model=ModelConfig(name_or_path=str(model_dir), gradient_checkpointing=grad_ckpt, padding_free=not padded),
                      data=DataConfig(shards=str(corpus), batch_size=batch, negatives=4, query_max_length=256,
                                      doc_max_length=512), output_dir="unused", stages=[StageConfig(steps=steps, lr=1e-5)],
                      mixed_precision="bf16" if device == "cuda" else "no")
    model = EmbeddingModel(cfg.model, device=device, training=True)
    from transformers import PreTrainedTokenizerFast

    model.tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir / "tok")
    model.train()
    batches = [Batch("retrieval", "synth", b["query"], b["positive"], [n[:4] for n in b["negatives"]])
               for b in fixed_batches(corpus, batch, steps + 2)]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=device == "cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    phases = dict.fromkeys(("sample", "tokenize", "forward", "backward", "optimizer"), 0.0)
    tokens = positions = 0
    t0 = None

    def tick(name: str, since: float) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        if t0 is not None:
            phases[name] += now - since
        return now

    for step in range(steps + 2):
        if step == 2:  # two warm-up steps
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        t = time.perf_counter()
        b = batches[step]
        t = tick("sample", t)
        q, p = encode_batch(model, b, cfg)
        t = tick("tokenize", t)
        with autocast:
            loss = task_loss(embed_encoded(model, q), embed_encoded(model, p), b, cfg)
        t = tick("forward", t)
        loss.backward()
        t = tick("backward", t)
        opt.step()
        opt.zero_grad()
        tick("optimizer", t)
        if t0 is not None:
            tokens += q.real + p.real
            positions += q.positions + p.positions
    if device == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    total = sum(phases.values())
    return {"path": "varlen" if model.varlen else ("micro-batches" if cfg.model.padding_free else "padded"),
            "tokens_per_s": tokens / secs, "tokens": tokens, "pad_fraction": 1 - tokens / positions,
            "profile": {k: v / total for k, v in phases.items()},
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0}


def run_st(model_dir: Path, corpus: Path, batch: int, steps: int, device: str, grad_ckpt: bool) -> dict:
    import torch
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments, losses, models)
    from transformers import TrainerCallback

    from torch.utils.data import BatchSampler, SequentialSampler

    groups = fixed_batches(corpus, batch, steps + 2)
    data = {"anchor": [q for g in groups for q in g["query"]], "positive": [p for g in groups for p in g["positive"]]}
    for k in range(4):
        data[f"negative_{k}"] = [n[k] for g in groups for n in g["negatives"]]
    word = models.Transformer(str(model_dir), max_seq_length=512, tokenizer_name_or_path=str(model_dir / "tok"),
                              model_kwargs={"dtype": torch.bfloat16 if device == "cuda" else torch.float32})
    model = SentenceTransformer(modules=[word, models.Pooling(word.get_word_embedding_dimension(), "mean")],
                                device=device)
    timing: dict = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 2:
                if device == "cuda":
                    torch.cuda.synchronize()
                timing["t0"] = time.time()

    counted = {"calls": 0, "tokens": 0}

    class CountingLoss(losses.MultipleNegativesRankingLoss):
        """MNRL that counts the real tokens of the timed steps' batches (each step calls it once)."""

        def forward(self, sentence_features, labels):  # noqa: ANN001 - sentence-transformers' signature
            if counted["calls"] >= 2:
                counted["tokens"] += int(sum(f["attention_mask"].sum() for f in sentence_features))
            counted["calls"] += 1
            return super().forward(sentence_features, labels)

    class InOrder(SentenceTransformerTrainer):
        def get_batch_sampler(self, dataset, batch_size, drop_last, *args, **kwargs):  # noqa: ANN001
            return BatchSampler(SequentialSampler(range(len(dataset))), batch_size, drop_last=True)

    sample = Dataset.from_dict(data)
    args = SentenceTransformerTrainingArguments(output_dir=str(corpus / "st"), max_steps=steps + 2,
                                                per_device_train_batch_size=batch, learning_rate=1e-5,
                                                bf16=device == "cuda", gradient_checkpointing=grad_ckpt,
                                                save_strategy="no", report_to=[], use_cpu=device == "cpu",
                                                dataloader_drop_last=True)
    trainer = InOrder(model=model, args=args, train_dataset=sample, loss=CountingLoss(model), callbacks=[Clock()])
    trainer.train()
    if device == "cuda":
        torch.cuda.synchronize()
    secs = time.time() - timing["t0"]
    assert counted["calls"] == steps + 2, counted
    return {"tokens_per_s": counted["tokens"] / secs, "tokens": counted["tokens"],
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0}


def summarise(reps: list[dict]) -> dict:
    """The median repetition's figures, with the range of tokens/s; the first error if any failed."""
    bad = [r for r in reps if "error" in r]
    if bad:
        return bad[0]
    ordered = sorted(reps, key=lambda r: r["tokens_per_s"])
    mid = dict(ordered[len(ordered) // 2])
    mid["range"] = f"{ordered[0]['tokens_per_s']:,.0f}-{ordered[-1]['tokens_per_s']:,.0f}"
    return mid


def worker(args) -> None:
    if args.worker == "st":
        res = run_st(Path(args.model), Path(args.corpus), args.batch, args.steps, args.device, args.grad_ckpt)
    else:
        res = run_ours(Path(args.model), Path(args.corpus), args.batch, args.steps, args.device, args.grad_ckpt,
                       padded=args.worker == "padded")
    print("RESULT " + json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0.5B,1.5B,7B")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing in both trainers")
    ap.add_argument("--padded", action="store_true", help="the trainer's padded path only (no padding-free column)")
    ap.add_argument("--workdir", type=Path, default=None, help="models and corpus (an existing corpus is reused)")
    ap.add_argument("--prepare", action="store_true", help="build the corpus in --workdir and stop")
    ap.add_argument("--records", type=int, default=2000, help="corpus size (at least (steps + 2) x batch)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of every (size, trainer), interleaved")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--corpus", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="train_throughput_"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus"
    corpus.mkdir(exist_ok=True)
    if not (corpus / "out" / "manifest.json").exists():
        make_corpus(corpus, n=max(args.records, (args.steps + 2) * args.batch))
    if args.prepare:
        print(f"corpus: {corpus / 'out'}")
        return
    rows = []
    for size in args.sizes.split(","):
        model_dir = work / f"qwen2-{size}"
        if not (model_dir / "config.json").exists():
            make_model(model_dir, size)
        runs: dict[str, list[dict]] = {}
        for _ in range(args.reps):  # interleaved: a slow minute of the machine hits every trainer alike
            for who in (("padded", "st") if args.padded else ("ours", "padded", "st")):
                cmd = [sys.executable, __file__, "--worker", who, "--model", str(model_dir), "--corpus",
                       str(corpus / "out"), "--batch", str(args.batch), "--steps", str(args.steps), "--device",
                       args.device]
                cmd += ["--grad-ckpt"] if args.grad_ckpt else []
                out = subprocess.run(cmd, capture_output=True, text=True)
                line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
                runs.setdefault(who, []).append(json.loads(line[7:]) if line else {"error": out.stderr[-500:]})
        rows.append((size, {who: summarise(r) for who, r in runs.items()}))
    print(f"\nbatch {args.batch} queries x (1 positive + 4 negatives), {args.steps} timed steps, device {args.device}, "
          f"{args.reps} interleaved repetitions (median, range)")
    print("| model (Qwen2, random weights) | trainer | tokens/s | range | real tokens timed | pad_fraction | vs padded "
          "| vs ST | peak GiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for size, res in rows:
        st, padded = res["st"], res["padded"]
        for who, label in (("ours", "padding-free"), ("padded", "padded"), ("st", "sentence-transformers")):
            r = res.get(who)
            if r is None:
                continue
            if "error" in r:
                print(f"| {size} | {label} | error: {r['error'][-200:]!r} |")
                continue
            vs_pad = f"{r['tokens_per_s'] / padded['tokens_per_s']:.2f}x" if who == "ours" and "error" not in padded else ""
            vs_st = f"{r['tokens_per_s'] / st['tokens_per_s']:.2f}x" if who != "st" and "error" not in st else ""
            pad = f"{r['pad_fraction']:.3f}" if "pad_fraction" in r else ""
            label = f"{label} ({r['path']})" if who == "ours" and r.get("path") else label
            print(f"| {size} | {label} | {r['tokens_per_s']:,.0f} | {r['range']} | {r['tokens']:,} | {pad} | {vs_pad} "
                  f"| {vs_st} | {r['peak_gib']:.1f} |")
    missed = []
    for size, res in rows:
        ours, padded = res.get("ours"), res.get("padded")
        if size == "tiny" or not ours or not padded or "error" in ours or "error" in padded:
            if ours and "error" in ours:
                missed.append(f"{size}: the padding-free run failed")
            continue
        if ours["pad_fraction"] > 0.10:
            missed.append(f"{size}: pad_fraction {ours['pad_fraction']:.3f} > 0.10")
        if ours["tokens_per_s"] < 1.2 * padded["tokens_per_s"]:
            missed.append(f"{size}: {ours['tokens_per_s'] / padded['tokens_per_s']:.2f}x the padded path < 1.2x")
    print("\ntargets (pad_fraction <= 0.10, >= 1.2x padded; sizes but tiny): "
          + ("met" if not missed else "MISSED: " + "; ".join(missed)))
    print("\nprofile of the trainer's step (share of time):")
    print("| model | trainer | sample | tokenize | forward | backward | optimizer |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for size, res in rows:
        for who in ("ours", "padded"):
            prof = res.get(who, {}).get("profile")
            if prof:
                print(f"| {size} | {'padding-free' if who == 'ours' else 'padded'} | "
                      + " | ".join(f"{prof[k]:.0%}" for k in ("sample", "tokenize", "forward", "backward", "optimizer"))
                      + " |")
    if missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
