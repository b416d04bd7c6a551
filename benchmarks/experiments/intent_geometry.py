"""How well a model's embeddings separate Banking77's intents: mean cosine within an intent, across intents, the
margin between them, and leave-one-out 1-nearest-neighbour accuracy, on the test split (with the eval prompt).

A diagnostic behind a reading in benchmarks/RESULTS.md (experiment 2: WikiQA's same-page negatives cost Banking77
accuracy). The texts, labels, instruction and prompt template come from a classification task of a `trainer
eval` task file (default: Banking77-test of the experiments' eval.yaml). Usage, one NAME=MODEL per model (a
SentenceTransformer folder, e.g. a run's `train/model`, or `untrained` for the packaged all-MiniLM-L6-v2):

    python benchmarks/experiments/intent_geometry.py untrained=untrained base-0=out/experiments/runs/KEY/train/model
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

EVAL = Path(__file__).resolve().parent / "eval.yaml"


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
    parser.add_argument("--tasks", default=str(EVAL), help="a `trainer eval` task file")
    parser.add_argument("--task", default="Banking77-test", help="a classification task of that file")
    args = parser.parse_args()
    import torch
    from sentence_transformers import SentenceTransformer

    from datakit.engines.embed import resolve_model
    from trainer.eval.local import DataReport, read_records
    from trainer.eval.taskfile import load_task_file

    torch.set_num_threads(1)  # a diagnostic beside running experiments
    task_file = load_task_file(args.tasks)
    spec = next((t for t in task_file.tasks if t.name == args.task and t.type == "classification"), None)
    if spec is None:
        parser.error(f"{args.tasks}: no classification task named {args.task!r}")
    test = read_records(spec, "test", task_file.sandbox, DataReport())
    prompt = task_file.spec.query_template.format(instruction=spec.instruction)  # classification: symmetric
    texts = [prompt + t for t in test.column("text").to_pylist()]
    labels = np.array(test.column("label").to_pylist())
    print("| model | cosine within intent | cosine across intents | margin | 1-NN accuracy |")
    print("|---|---:|---:|---:|---:|")
    for spec in args.models:
        name, _, path = spec.partition("=")
        model = SentenceTransformer(resolve_model("all-MiniLM-L6-v2") if path == "untrained" else path, device="cpu")
        g = geometry(model.encode(texts, batch_size=64, normalize_embeddings=True), labels)
        print(f"| {name} | {g['within']:.4f} | {g['across']:.4f} | {g['margin']:.4f} | {g['1nn']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
