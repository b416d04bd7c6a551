"""TREC run files from mteb's retrieval predictions, for trec_eval / pytrec_eval outside mteb."""
from __future__ import annotations

import json
from pathlib import Path


def _is_run(split: object) -> bool:
    return isinstance(split, dict) and all(isinstance(v, dict) for v in split.values())


def write_runs(folder: str | Path) -> list[Path]:
    """`{task}.{subset}.{split}.run` beside each `{task}_predictions.json` that holds a ranking."""
    written = []
    for pred in sorted(Path(folder).glob("*_predictions.json")):
        task = pred.name[: -len("_predictions.json")]
        data = json.loads(pred.read_text(encoding="utf-8"))
        for subset, splits in data.items():
            if subset == "mteb_model_meta" or not isinstance(splits, dict):
                continue
            for split, ranking in splits.items():
                if not _is_run(ranking):
                    continue
                path = pred.parent / f"{task}.{subset}.{split}.run"
                with open(path, "w", encoding="utf-8") as fh:
                    for qid, docs in ranking.items():
                        ranked = sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))
                        for rank, (did, score) in enumerate(ranked, start=1):
                            fh.write(f"{qid} Q0 {did} {rank} {score!r} embedkit\n")
                written.append(path)
    return written


def read_run(path: str | Path) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        qid, _, did, _, score, _ = line.split()
        run.setdefault(qid, {})[did] = float(score)
    return run
