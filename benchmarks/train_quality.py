"""Fine-tuning quality on CPU: the packaged all-MiniLM-L6-v2 trained by `trainer` on a corpus built by a
datakit recipe from real data, against sentence-transformers' own trainer on the same records, steps, batch
size and learning rate (MultipleNegativesRankingLoss for retrieval, CoSENTLoss for pairs).

Evaluation on held-out splits: STS-B test (Spearman of cosine similarity against the gold scores) and WikiQA
test (nDCG@10, each question against the pool of all test sentences).

    python benchmarks/train_quality.py [--steps 300] [--mix matched|report]

`--mix report` (default): our two stages (half the steps retrieval only, half at eta 0.5) against
sentence-transformers' proportional sampler (batches by dataset size). `--mix matched`: the same task mix on
both sides, every step drawing retrieval or pairs half the time: our stage 2 alone at eta 0.5 against
sentence-transformers' round-robin sampler.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def eval_sets():
    sts = [line.split("\t") for line in (SHARED / "stsb" / "sts-test.csv").read_text(encoding="utf-8").splitlines()]
    sts = [(p[5], p[6], float(p[4])) for p in sts if len(p) >= 7]
    lines = (SHARED / "wikiqa" / "WikiQA-test.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:] if len(line.split("\t")) == len(header)]
    pool = list(dict.fromkeys(r["Sentence"] for r in rows))
    relevant: dict[str, set[int]] = {}
    index = {s: i for i, s in enumerate(pool)}
    for r in rows:
        if r["Label"] == "1":
            relevant.setdefault(r["Question"], set()).add(index[r["Sentence"]])
    return sts, pool, relevant


def evaluate(encode, sts, pool, relevant, query_prompt: str) -> tuple[float, float]:
    from scipy.stats import spearmanr

    a = encode([x[0] for x in sts], "")
    b = encode([x[1] for x in sts], "")
    rho = spearmanr((a * b).sum(1), [x[2] for x in sts]).correlation
    docs = encode(pool, "")
    queries = list(relevant)
    q = encode(queries, query_prompt)
    top = np.argsort(-(q @ docs.T), axis=1)[:, :10]
    ndcg = []
    for qi, query in enumerate(queries):
        rel = relevant[query]
        dcg = sum(1 / math.log2(r + 2) for r, d in enumerate(top[qi]) if d in rel)
        ideal = sum(1 / math.log2(r + 2) for r in range(min(len(rel), 10)))
        ndcg.append(dcg / ideal)
    return float(rho), float(np.mean(ndcg))


def st_encoder(model):
    return lambda texts, prompt: model.encode([prompt + t for t in texts], batch_size=64, normalize_embeddings=True,
                                              convert_to_numpy=True)


def train_ours(corpus: Path, out: Path, steps: int, batch: int, lr: float, mix: str) -> tuple[Path, float]:
    from trainer.data import DataConfig
    from trainer.model import ModelConfig
    from trainer.train import StageConfig, TrainConfig, train

    first = steps // 2 if mix == "report" else 0  # matched: no retrieval-only stage
    cfg = TrainConfig(model=ModelConfig(name_or_path="embedded-minilm"),
                      data=DataConfig(shards=str(corpus), batch_size=batch, pair_batch_size=batch, negatives=1,
                                      query_max_length=64, doc_max_length=128, eta=0.5),
                      output_dir=str(out), stages=[StageConfig(steps=first, lr=lr, warmup_steps=steps // 20),
                                                   StageConfig(steps=steps - first, lr=lr, warmup_steps=steps // 20)],
                      tau=0.05, cosent_scale=20.0, log_every=50)
    t = time.time()
    return train(cfg, resume=False, log=lambda r: None), time.time() - t


def train_st(corpus: Path, out: Path, steps: int, batch: int, lr: float, mix: str) -> tuple[Path, float]:
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments, losses)
    from sentence_transformers.training_args import MultiDatasetBatchSamplers

    from datakit.engines.embed import resolve_model
    from trainer.data import open_shards

    tables = open_shards(corpus)
    ret, pair = tables["retrieval"].to_pylist(), tables["pair"].to_pylist()
    retrieval = Dataset.from_dict({"anchor": [r["query"] for r in ret], "positive": [r["positive"] for r in ret],
                                   "negative": [r["negatives"][0] if r["negatives"] else r["positive"] for r in ret]})
    pairs = Dataset.from_dict({"sentence1": [r["text_a"] for r in pair], "sentence2": [r["text_b"] for r in pair],
                               "score": [r["score"] / 5.0 for r in pair]})
    model = SentenceTransformer(resolve_model("all-MiniLM-L6-v2"), device="cpu")
    model.max_seq_length = 128
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "st-tmp"), max_steps=steps, per_device_train_batch_size=batch, learning_rate=lr,
        warmup_steps=steps // 10, lr_scheduler_type="cosine", save_strategy="no", logging_steps=50, report_to=[],
        multi_dataset_batch_sampler=(MultiDatasetBatchSamplers.PROPORTIONAL if mix == "report"
                                     else MultiDatasetBatchSamplers.ROUND_ROBIN), use_cpu=True, seed=0)
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset={"retrieval": retrieval, "pairs": pairs},
        loss={"retrieval": losses.MultipleNegativesRankingLoss(model), "pairs": losses.CoSENTLoss(model)})
    t = time.time()
    trainer.train()
    model.save(str(out / "st-model"))
    return out / "st-model", time.time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--mix", choices=["report", "matched"], default="report")
    args = ap.parse_args()
    if not SHARED.exists():
        sys.exit("needs ../shared/data")
    from sentence_transformers import SentenceTransformer

    from datakit.engines.embed import resolve_model
    from datakit.pipeline import build
    from datakit.recipe import load_recipe

    work = args.workdir or Path(tempfile.mkdtemp(prefix="train_quality_"))
    corpus = work / "corpus"
    build(load_recipe(ROOT / "benchmarks" / "recipes" / "quality.yaml"), corpus, force=True)
    sts, pool, relevant = eval_sets()
    prompt = "Instruct: Given a question, retrieve Wikipedia sentences that answer it\nQuery: "
    rows = []
    base = SentenceTransformer(resolve_model("all-MiniLM-L6-v2"), device="cpu")
    rows.append(("all-MiniLM-L6-v2, not fine-tuned", *evaluate(st_encoder(base), sts, pool, relevant, ""), 0.0))
    ours, secs = train_ours(corpus, work / "ours", args.steps, args.batch, args.lr, args.mix)
    model = SentenceTransformer(str(ours), device="cpu")
    label = "two stages" if args.mix == "report" else "stage 2 alone, eta 0.5"
    rows.append((f"trainer ({label}, InfoNCE + query-query negatives, CoSENT)",
                 *evaluate(st_encoder(model), sts, pool, relevant, prompt), secs))
    st_path, secs = train_st(corpus, work, args.steps, args.batch, args.lr, args.mix)
    rows.append(("sentence-transformers trainer (MNRL + CoSENTLoss)",
                 *evaluate(st_encoder(SentenceTransformer(str(st_path), device="cpu")), sts, pool, relevant, ""), secs))
    print(f"\n{args.steps} steps, batch {args.batch}, lr {args.lr}, 1 hard negative, CPU, mix {args.mix}")
    print("| model | STS-B test Spearman | WikiQA test nDCG@10 | train s |")
    print("|---|---:|---:|---:|")
    for name, rho, ndcg, secs in rows:
        print(f"| {name} | {rho:.4f} | {ndcg:.4f} | {secs:.0f} |")


if __name__ == "__main__":
    main()
