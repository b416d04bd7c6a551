"""How well a model's embeddings separate Banking77's intents: mean cosine within an intent, across intents, the
margin between them, and leave-one-out 1-nearest-neighbour accuracy, on the test split (with the eval prompt).

A diagnostic behind a reading in benchmarks/RESULTS.md (experiment 2: WikiQA's same-page negatives cost Banking77
accuracy). Usage, one NAME=MODEL per model (a SentenceTransformer folder, e.g. a run's `train/model`, or
`untrained` for the packaged all-MiniLM-L6-v2):

    python benchmarks/experiments/intent_geometry.py untrained=untrained base-0=out/experiments/runs/KEY/train/model
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

TEST = Path(__file__).resolve().parents[3] / "shared" / "data" / "banking77" / "test.csv"
PROMPT = "Instruct: Given an online banking query, find the corresponding intent\nQuery: "  # as eval.yaml + train.yaml


def geometry(embeddings: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Within-intent and across-intent mean cosine, their margin and leave-one-out 1-NN accuracy (rows L2-normed)."""
    sims = embeddings @ embeddings.T
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    across = labels[:, None] != labels[None, :]
    within_mean, across_mean = float(sims[same].mean()), float(sims[across].mean())
    np.fill_diagonal(sims, -np.inf)
    nearest = float((labels[sims.argmax(1)] == labels).mean())
    return {"within": within_mean, "across": across_mean, "margin": within_mean - across_mean, "1nn": nearest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", metavar="NAME=MODEL")
    parser.add_argument("--test", default=str(TEST), help="Banking77 test CSV (columns text, category)")
    args = parser.parse_args()
    import torch
    from sentence_transformers import SentenceTransformer

    from datakit.embed import resolve_model

    torch.set_num_threads(1)  # a diagnostic beside running experiments
    with open(args.test, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    texts = [PROMPT + r["text"] for r in rows]
    labels = np.array([r["category"] for r in rows])
    print("| model | cosine within intent | cosine across intents | margin | 1-NN accuracy |")
    print("|---|---:|---:|---:|---:|")
    for spec in args.models:
        name, _, path = spec.partition("=")
        model = SentenceTransformer(resolve_model("all-MiniLM-L6-v2") if path == "untrained" else path, device="cpu")
        g = geometry(model.encode(texts, batch_size=64, normalize_embeddings=True), labels)
        print(f"| {name} | {g['within']:.4f} | {g['across']:.4f} | {g['margin']:.4f} | {g['1nn']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
