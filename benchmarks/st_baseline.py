"""The peer for issue #42: sentence-transformers' own trainer on the same model, corpus, batch size and steps as
`trainer run`, with its defaults (MultipleNegativesRankingLoss for retrieval and classification records,
CoSENTLoss for pairs, learning rate 5e-5, linear decay, no warm-up, proportional multi-dataset sampling), as a
user gluing the two by hand would run it.

The corpus is a datakit output folder: retrieval records become (anchor, positive, negative_1..K) rows (short
lists filled with other positives of the dataset, as our sampler fills them); pairs become (sentence1,
sentence2, score); classification records become (anchor, positive of the same label) rows. No instructions:
sentence-transformers trains on the texts as they are unless told otherwise.

The model is loaded exactly as `trainer run` loads it (`trainer.model.EmbeddingModel`: the GGUF dequantised,
bidirectional unless `--causal`), exported as a SentenceTransformer folder (mean pooling, normalised), and that
folder is what sentence-transformers trains. The trained model is saved to OUT/model, with OUT/stats.json:
seconds, steps, real (non-padding) tokens per second, peak RSS.

    python benchmarks/st_baseline.py --shards recipes/smollm2/out/corpus --model embedded-smollm2 \\
        --steps 450 --batch-size 16 --negatives 1 --max-length 128 --out out/st-bidir [--causal] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _source import use_configured_source  # noqa: E402

use_configured_source()


def export_start_model(name: str, folder: Path, causal: bool, max_length: int) -> Path:
    """The untrained model as a SentenceTransformer folder, loaded the way the trainer loads it."""
    from trainer.config import DataConfig, ModelConfig, TrainConfig
    from trainer.export import export
    from trainer.model import EmbeddingModel

    cfg = TrainConfig(model=ModelConfig(name_or_path=name, pooling="mean", bidirectional=not causal),
                      data=DataConfig(doc_max_length=max_length, query_max_length=max_length))
    model = EmbeddingModel(cfg.model, device="cpu")
    return export(model, folder, cfg, prompts={})


def datasets_from_shards(shards: Path, negatives: int, seed: int):
    """{name: datasets.Dataset} and {name: kind} from a datakit output folder."""
    import numpy as np
    from datasets import Dataset

    from trainer.data import dataset_index, open_shards

    rng = np.random.default_rng(seed)
    tables = open_shards(shards)
    out, kinds = {}, {}
    for kind, table in tables.items():
        for name, rows in sorted(dataset_index(table).items()):
            sub = table.take(rows)
            key = f"{kind}-{name}"
            if kind == "retrieval":
                q, p = sub.column("query").to_pylist(), sub.column("positive").to_pylist()
                negs = sub.column("negatives").to_pylist()
                cols = {"anchor": q, "positive": p}
                for k in range(negatives):
                    filled = []
                    for i, n in enumerate(negs):
                        if len(n) > k:
                            filled.append(n[k])
                        else:  # short of hard negatives: another positive of the dataset
                            j = int(rng.integers(len(p)))
                            filled.append(p[j] if p[j] != p[i] else p[(j + 1) % len(p)])
                    cols[f"negative_{k + 1}"] = filled
                out[key] = Dataset.from_dict(cols)
            elif kind == "pair":
                out[key] = Dataset.from_dict({"sentence1": sub.column("text_a").to_pylist(),
                                              "sentence2": sub.column("text_b").to_pylist(),
                                              "score": [float(s) for s in sub.column("score").to_pylist()]})
            else:
                texts, labels = sub.column("text").to_pylist(), sub.column("label").to_pylist()
                by_label: dict[str, list[int]] = {}
                for i, lab in enumerate(labels):
                    by_label.setdefault(lab, []).append(i)
                anchors, positives = [], []
                for i, lab in enumerate(labels):
                    same = [j for j in by_label[lab] if j != i]
                    if same:
                        anchors.append(texts[i])
                        positives.append(texts[same[int(rng.integers(len(same)))]])
                out[key] = Dataset.from_dict({"anchor": anchors, "positive": positives})
            kinds[key] = kind
    return out, kinds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", required=True, type=Path)
    ap.add_argument("--model", default="embedded-smollm2")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--negatives", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--causal", action="store_true", help="keep the decoder's causal attention")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=5e-5, help="sentence-transformers' default")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss, MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments
    from transformers import TrainerCallback

    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    start = export_start_model(args.model, args.out / "start", args.causal, args.max_length)
    model = SentenceTransformer(str(start), device="cpu")
    model.max_seq_length = args.max_length
    if not args.causal:  # the export keeps is_causal: false; make sure it is honoured after the reload
        from trainer.model import check_bidirectional

        check_bidirectional(model[0].auto_model, torch.device("cpu"))
    data, kinds = datasets_from_shards(args.shards, args.negatives, args.seed)
    losses = {k: (CoSENTLoss(model) if kinds[k] == "pair" else MultipleNegativesRankingLoss(model)) for k in data}

    tokens = {"real": 0}
    forward = model.forward

    def counting_forward(features, *a, **kw):  # real tokens of every text the losses embed
        if "attention_mask" in features:
            tokens["real"] += int(features["attention_mask"].sum())
        return forward(features, *a, **kw)

    model.forward = counting_forward

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            self.t0 = time.time()

        def on_train_end(self, *a, **kw):
            self.seconds = time.time() - self.t0

    clock = Clock()
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(args.out / "checkpoints"), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, seed=args.seed, data_seed=args.seed, save_strategy="no", logging_steps=10,
        report_to="none", use_cpu=True, dataloader_drop_last=True)
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=data, loss=losses, callbacks=[clock])
    trainer.train()
    model.forward = forward
    model.save(str(args.out / "model"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    stats = {"trainer": "sentence-transformers", "version": __import__("sentence_transformers").__version__,
             "steps": args.steps, "batch_size": args.batch_size, "negatives": args.negatives, "causal": args.causal,
             "seed": args.seed, "lr": args.lr, "train_s": round(clock.seconds, 1),
             "tokens_per_s": round(tokens["real"] / max(clock.seconds, 1e-9), 1), "peak_rss_mib": round(peak / 2**20)}
    (args.out / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
