"""Tables from results folders: a summary per model (per task, mean per task type, overall mean) and the
side-by-side comparison of several folders (Markdown, CSV and a bar chart PNG)."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TYPE_ORDER = ["Retrieval", "Reranking", "STS", "PairClassification", "Classification", "Clustering"]


@dataclass(frozen=True)
class Score:
    model: str  # mteb name, org/model
    revision: str
    task: str
    type: str
    metric: str
    value: float
    zero_shot: bool | None = None  # mteb's is_zero_shot_on for this task (None: the model declares no data)


ZERO_SHOT_NOTE = ("† the model was trained on this task's data (its model_meta.json `training_datasets`, or its base "
                  "model's): not a zero-shot score")


def model_meta(meta_path: Path):  # -> mteb ModelMeta | None
    """The mteb ModelMeta a results folder holds for a model (None when absent or unreadable)."""
    try:
        from mteb.models.model_meta import ModelMeta

        return ModelMeta.model_validate_json_resolved(meta_path.read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - older or foreign results: no zero-shot marks
        return None


def zero_shot_percentage(folder: str | Path, model: str, revision: str, tasks: list[str]) -> int | None:
    """mteb's own zero_shot_percentage of a model over tasks (None when the model declares no training data)."""
    meta = model_meta(Path(folder) / "results" / model.replace("/", "__") / revision / "model_meta.json")
    return meta.zero_shot_percentage(tasks) if meta is not None and tasks else None


def read_results(folder: str | Path) -> list[Score]:
    """Every task result under a results folder (mteb's `results/{model}/{revision}/{task}.json` layout)."""
    folder = Path(folder)
    root = folder / "results"
    if not root.is_dir():
        raise FileNotFoundError(f"{folder}: no results/ folder (not the output of `trainer eval`)")
    scores, metas = [], {}
    for path in sorted(root.glob("*/*/*.json")):
        if path.name == "model_meta.json":
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = [e for split in data.get("scores", {}).values() for e in split]
        if not entries:
            continue
        meta_path = path.parent / "model_meta.json"
        name = json.loads(meta_path.read_text())["name"] if meta_path.exists() else path.parent.parent.name
        if meta_path not in metas:
            metas[meta_path] = model_meta(meta_path) if meta_path.exists() else None
        extra = entries[0].get("embedkit") or {}
        task_type, metric = (extra["type"], extra["main_score"]) if "main_score" in extra else \
            _registry_meta(data["task_name"])
        value = float(np.mean([e["main_score"] for e in entries]))
        meta = metas[meta_path]
        zero = meta.is_zero_shot_on([data["task_name"]]) if meta is not None else None
        scores.append(Score(name, path.parent.name, data["task_name"], task_type, metric, value, zero))
    return scores


def _registry_meta(task: str) -> tuple[str, str]:
    """(type, main score) of a task written by other mteb tooling, from mteb's registry."""
    try:
        import mteb

        meta = mteb.get_task(task).metadata
        return meta.type, meta.main_score
    except Exception:  # noqa: BLE001 - a task mteb does not know
        return "Other", "main_score"


def summary_rows(scores: list[Score]) -> list[tuple[str, str, str, float]]:
    """(label, type, metric, value) rows: each task (marked † when the model is not zero-shot on it), then the
    mean per task type, then the overall mean."""
    rows = [(s.task + (" †" if s.zero_shot is False else ""), s.type, s.metric, s.value)
            for s in sorted(scores, key=_order)]
    by_type: dict[str, list[float]] = {}
    for s in scores:
        by_type.setdefault(s.type, []).append(s.value)
    for t in sorted(by_type, key=_type_rank):
        rows.append((f"mean {t}", t, "", float(np.mean(by_type[t]))))
    if scores:
        rows.append(("mean (tasks)", "", "", float(np.mean([s.value for s in scores]))))
    return rows


def _type_rank(t: str) -> int:
    return TYPE_ORDER.index(t) if t in TYPE_ORDER else len(TYPE_ORDER)


def _order(s: Score) -> tuple[int, str]:
    return _type_rank(s.type), s.task


def write_summary(folder: str | Path, scores: list[Score], model: str, prompts: str = "") -> str:
    """Write summary.md / summary.csv for one model's scores in a results folder; return the Markdown.
    `prompts` says which prompts the model was given, and why."""
    folder = Path(folder)
    rows = summary_rows(scores)
    slug = model.replace("/", "__")
    lines = [f"| task | type | metric | {model} |", "|---|---|---|---:|"]
    lines += [f"| {label} | {t} | {metric} | {value:.4f} |" for label, t, metric, value in rows]
    md = "\n".join(lines) + "\n" + _zero_shot_line(folder, scores) + (f"\nPrompts: {prompts}.\n" if prompts else "")
    (folder / f"summary-{slug}.md").write_text(md, encoding="utf-8")
    with open(folder / f"summary-{slug}.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["task", "type", "metric", "value"])
        w.writerows([(label, t, metric, f"{value:.6f}") for label, t, metric, value in rows])
    return md


def _zero_shot_line(folder: Path, scores: list[Score]) -> str:
    """What mteb says of the model's zero-shot standing on these tasks, under a summary."""
    if not scores:
        return ""
    pct = zero_shot_percentage(folder, scores[0].model, scores[0].revision, [s.task for s in scores])
    if pct is None:
        return "\nZero-shot: unknown (the model declares no training data; mteb cannot tell).\n"
    marked = "; " + ZERO_SHOT_NOTE if any(s.zero_shot is False for s in scores) else ""
    return f"\nZero-shot on {pct}% of these tasks (mteb's zero_shot_percentage){marked}.\n"


@dataclass
class Comparison:
    columns: list[str]  # one per (folder, model, revision), with the model's zero-shot percentage when known
    rows: list[tuple[str, str, str, list[float | None]]]  # label, type, metric, value per column
    not_zero_shot: set[tuple[str, int]] = field(default_factory=set)  # (task, column) scores marked †

    def markdown(self) -> str:
        head = "| task | type | metric | " + " | ".join(self.columns) + " |"
        lines = [head, "|---|---|---|" + "---:|" * len(self.columns)]
        for label, t, metric, values in self.rows:
            base = values[0]
            cells = []
            for i, v in enumerate(values):
                if v is None:
                    cells.append("-")
                elif i == 0 or base is None:
                    cells.append(f"{v:.4f}")
                else:
                    d = v - base
                    mark = "▲" if d > 0 else ("▼" if d < 0 else "=")
                    cells.append(f"{v:.4f} ({mark}{d:+.4f})")
                if (label, i) in self.not_zero_shot:
                    cells[-1] += " †"
            lines.append(f"| {label} | {t} | {metric} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n" + (f"\n{ZERO_SHOT_NOTE}.\n" if self.not_zero_shot else "")


def compare(folders: list[str | Path]) -> Comparison:
    """Main scores of every model in every folder side by side; deltas are against the first column."""
    columns: list[str] = []
    per_column: list[dict[str, Score]] = []
    from trainer.eval.status import read_status

    for folder in folders:
        scores = read_results(folder)
        keys = sorted({(s.model, s.revision) for s in scores})
        state, _ = read_status(folder)
        flag = " (INCOMPLETE)" if state in ("incomplete", "running") else ""
        for model, rev in keys:
            label = Path(folder).name if len(keys) == 1 else f"{Path(folder).name}:{model.split('/')[-1]}@{rev[:8]}"
            label += flag
            col = {s.task: s for s in scores if (s.model, s.revision) == (model, rev)}
            pct = zero_shot_percentage(folder, model, rev, list(col))
            columns.append(label + (f" (zero-shot {pct}%)" if pct is not None else ""))
            per_column.append(col)
    seen: dict[str, Score] = {}
    for col in per_column:
        for s in col.values():
            seen.setdefault(s.task, s)
    seen = dict(sorted(seen.items(), key=lambda kv: _order(kv[1])))
    rows = [(name, s.type, s.metric, [col[name].value if name in col else None for col in per_column])
            for name, s in seen.items()]
    types = sorted({s.type for s in seen.values()}, key=_type_rank)
    for t in types:
        names = [n for n, s in seen.items() if s.type == t]
        rows.append((f"mean {t}", t, "", [_mean([col[n].value for n in names if n in col], len(names))
                                          for col in per_column]))
    rows.append(("mean (tasks)", "", "", [_mean([s.value for s in col.values()], len(seen)) for col in per_column]))
    marks = {(name, i) for i, col in enumerate(per_column) for name, s in col.items() if s.zero_shot is False}
    return Comparison(columns, rows, marks)


def _mean(values: list[float], expected: int) -> float | None:
    """The mean, or None when a column lacks some of the tasks (a mean over other tasks would mislead)."""
    return float(np.mean(values)) if values and len(values) == expected else None


def write_comparison(comp: Comparison, out: str | Path) -> dict[str, Path]:
    """comparison.md, comparison.csv and comparison.png (grouped bars per task) in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "comparison.md", "csv": out / "comparison.csv", "png": out / "comparison.png"}
    paths["md"].write_text(comp.markdown(), encoding="utf-8")
    with open(paths["csv"], "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["task", "type", "metric", *comp.columns])
        w.writerows([(label, t, m, *("" if v is None else f"{v:.6f}" for v in values))
                     for label, t, m, values in comp.rows])
    _bar_chart(comp, paths["png"])
    return paths


def _bar_chart(comp: Comparison, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in comp.rows if not r[0].startswith("mean ")] or comp.rows
    n, k = len(rows), len(comp.columns)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * n * max(1, k) / 2 + 2), 4.5))
    width = 0.8 / max(k, 1)
    x = np.arange(n)
    for j, col in enumerate(comp.columns):
        vals = [r[3][j] if r[3][j] is not None else 0.0 for r in rows]
        ax.bar(x + (j - (k - 1) / 2) * width, vals, width, label=col)
    ax.set_xticks(x, [f"{r[0]}\n({r[2]})" for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("main score")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("main score per task")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
