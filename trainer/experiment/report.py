"""An experiment's results: results.csv (one row per run, task and metric), a summary with mean and standard
deviation over seeds and the difference to the base variant, plots with error bars, and an HTML page that puts
the table, the plots, each variant's overrides and its corpus side by side.

The difference to base is marked `beyond noise` when it exceeds twice its standard error
(sqrt(s_v^2 / n_v + s_b^2 / n_b), seeds as samples), else `within noise`; with one seed there is no noise
estimate and nothing is marked.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.experiment.runner import UNTRAINED
from trainer.experiment.spec import Experiment


@dataclass
class Cell:
    n: int
    mean: float
    std: float
    diff: float | None = None
    noise: float | None = None

    @property
    def mark(self) -> str:
        if self.diff is None or self.noise is None:
            return ""
        return "beyond noise" if abs(self.diff) > self.noise else "within noise"


def summarise(exp: Experiment, results: list[dict[str, Any]]) -> tuple[list[str], list[str], dict]:
    """(variants, tasks, {(variant, task): Cell}) over the finished runs."""
    values: dict[tuple[str, str], list[float]] = {}
    for r in results:
        for task, s in r.get("scores", {}).items():
            values.setdefault((r["variant"], task), []).append(s["value"])
    variants = [UNTRAINED] + [v.name for v in exp.variants]
    tasks = list(dict.fromkeys(t for _, t in values))
    cells = {}
    for (v, t), xs in values.items():
        cells[(v, t)] = Cell(len(xs), float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0)
    for (v, t), c in cells.items():
        b = cells.get((exp.spec.base, t))
        if b is None or v in (exp.spec.base, UNTRAINED):
            continue
        c.diff = c.mean - b.mean
        if c.n > 1 and b.n > 1:
            c.noise = 2 * math.sqrt(c.std ** 2 / c.n + b.std ** 2 / b.n)
    return variants, tasks, cells


def write_results(exp: Experiment, results: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    folder = out / exp.name
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"results": folder / "results.csv", "summary_md": folder / "summary.md",
             "summary_csv": folder / "summary.csv", "plots": folder / "plots.png", "html": folder / "index.html"}
    with open(paths["results"], "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["variant", "seed", "task", "metric", "value", "train_s", "eval_s", "run"])
        for r in sorted(results, key=lambda r: (r["variant"], r["seed"])):
            for task, s in r.get("scores", {}).items():
                w.writerow([r["variant"], r["seed"], task, s["main_score"], f"{s['value']:.6f}", r.get("train_s", ""),
                            r.get("eval_s", ""), r["key"]])
            if "error" in r:
                w.writerow([r["variant"], r["seed"], "", "failed", "", "", "", r["key"]])
    variants, tasks, cells = summarise(exp, results)
    paths["summary_md"].write_text(summary_markdown(exp, variants, tasks, cells, results, out), encoding="utf-8")
    with open(paths["summary_csv"], "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["variant", "task", "n", "mean", "std", "diff_to_base", "noise", "mark"])
        for v in variants:
            for t in tasks:
                c = cells.get((v, t))
                if c is not None:
                    w.writerow([v, t, c.n, f"{c.mean:.6f}", f"{c.std:.6f}",
                                "" if c.diff is None else f"{c.diff:.6f}",
                                "" if c.noise is None else f"{c.noise:.6f}", c.mark])
    _plot(exp, variants, tasks, cells, paths["plots"])
    paths["html"].write_text(html_page(exp, variants, tasks, cells, results, out, paths["plots"]), encoding="utf-8")
    return paths


def read_results_csv(path: str | Path) -> list[dict[str, Any]]:
    """The runs of a results.csv (`write_results`) as run results: a published table regenerated from the CSV
    committed beside it equals the one written from the runs."""
    runs: dict[tuple[str, int, str], dict[str, Any]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            run = runs.setdefault((row["variant"], int(row["seed"]), row["run"]),
                                  {"variant": row["variant"], "seed": int(row["seed"]), "key": row["run"]})
            if row["metric"] == "failed":
                run["error"] = "failed (see the run's failed.json)"
                continue
            run.setdefault("scores", {})[row["task"]] = {"main_score": row["metric"], "value": float(row["value"])}
            run["train_s"] = float(row["train_s"] or 0.0)
            run["eval_s"] = float(row["eval_s"] or 0.0)
    return list(runs.values())


def _times(results: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        if "scores" in r:
            out.setdefault(r["variant"], []).append((r.get("train_s", 0.0), r.get("eval_s", 0.0)))
    return {v: (float(np.mean([a for a, _ in xs])), float(np.mean([b for _, b in xs]))) for v, xs in out.items()}


def summary_markdown(exp: Experiment, variants: list[str], tasks: list[str], cells: dict,
                     results: list[dict[str, Any]], out: Path) -> str:
    times = _times(results)
    builds = {v.name: _corpus(out, v.build_key).get("build_s") for v in exp.variants}
    sharing: dict[str, list[str]] = {}
    for v in exp.variants:
        sharing.setdefault(v.build_key, []).append(v.name)
    first = {names[0] for names in sharing.values()}
    owner = {name: names[0] for names in sharing.values() for name in names}
    failed = [r for r in results if "error" in r]
    lines = [f"# {exp.name}: mean ± std over seeds {exp.seeds}; difference to `{exp.spec.base}`", "",
             "| variant | " + " | ".join(tasks) + " | build s | train s | eval s |",
             "|---|" + "---:|" * (len(tasks) + 3)]
    for v in variants:
        row = []
        for t in tasks:
            c = cells.get((v, t))
            if c is None:
                row.append("-")
                continue
            txt = f"{c.mean:.4f} ± {c.std:.4f}" if c.n > 1 else f"{c.mean:.4f}"
            if c.n < len(exp.seeds) and v != UNTRAINED:  # (scored once)
                txt += f" [{c.n} of {len(exp.seeds)} seeds]"
            if c.diff is not None:
                txt += f" ({c.diff:+.4f}{', ' + c.mark if c.mark else ''})"
            row.append(txt)
        tr, ev = times.get(v, (0.0, 0.0))
        b = builds.get(v)
        shown = "-" if b is None else f"{b:.0f}" if v in first or v not in owner else f"(= {owner[v]})"
        lines.append(f"| {v} | " + " | ".join(row) + f" | {shown} | {tr:.0f} | {ev:.0f} |")
    shared = [names for names in sharing.values() if len(names) > 1]
    if shared:
        lines += [""] + [f"Corpus of {names[0]}: built once, shared by {len(names)} variants ({', '.join(names)})."
                         for names in shared]
    worse = worse_than_start(variants, tasks, cells)
    if worse:
        lines += ["", "Worse than the model it started from (mean over seeds below the untrained model's score):"] + \
            [f"- {line}" for line in worse]
    if failed:
        lines += ["", "Failed runs:"] + [f"- {r['variant']} seed {r['seed']}: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def worse_than_start(variants: list[str], tasks: list[str], cells: dict) -> list[str]:
    """`variant: task before -> after (delta)` for every trained variant whose mean is below the untrained
    model's score on a task (rounded to 4 decimals, as the table shows them)."""
    out = []
    for v in variants:
        if v == UNTRAINED:
            continue
        for t in tasks:
            start, now = cells.get((UNTRAINED, t)), cells.get((v, t))
            if start is not None and now is not None and round(now.mean, 4) < round(start.mean, 4):
                out.append(f"{v}: {t} {start.mean:.4f} -> {now.mean:.4f} ({now.mean - start.mean:+.4f})")
    return out


def _plot(exp: Experiment, variants: list[str], tasks: list[str], cells: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(tasks), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        names = [v for v in variants if (v, task) in cells]
        means = [cells[(v, task)].mean for v in names]
        errs = [cells[(v, task)].std for v in names]
        colors = ["#999999" if v == UNTRAINED else ("#1f77b4" if v == exp.spec.base else "#ff7f0e") for v in names]
        ax.bar(range(len(names)), means, yerr=errs, capsize=3, color=colors)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=7)
        lo = min(m - e for m, e in zip(means, errs)) if means else 0
        hi = max(m + e for m, e in zip(means, errs)) if means else 1
        pad = (hi - lo) * 0.15 + 1e-3
        ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad) if hi <= 1 else hi + pad)
        ax.set_title(task, fontsize=9)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.suptitle(f"{exp.name}: mean ± std over {len(exp.seeds)} seed(s); base in blue", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _corpus(out: Path, build_key: str) -> dict[str, Any]:
    """A build's manifest, summarised: records per kind, quarantine, drops, negatives mix, synthesis."""
    path = out / "builds" / build_key / "manifest.json"
    if not path.exists():
        return {}
    from datakit.manifest import load

    m = load(path.parent)
    counts = {k: sum(v.values()) for k, v in m.counts.items()}
    synth = {step: {"kept": s.kept, "dropped": s.dropped} for step, s in m.synthesis.items()}
    return {"records": counts, "quarantined": m.quarantined.n, "dropped": m.dropped, "negatives": m.negatives,
            "synthesis": synth, "build_s": m.duration_s}


def html_page(exp: Experiment, variants: list[str], tasks: list[str], cells: dict, results: list[dict[str, Any]],
              out: Path, plot: Path) -> str:
    e = html.escape
    times = _times(results)
    head = "".join(f"<th>{e(t)}</th>" for t in tasks)
    rows = []
    for v in variants:
        tds = []
        for t in tasks:
            c = cells.get((v, t))
            if c is None:
                tds.append("<td>-</td>")
                continue
            diff = "" if c.diff is None else f"<br><small>{c.diff:+.4f} {e(c.mark)}</small>"
            cls = ' class="beyond"' if c.mark == "beyond noise" else ""
            tds.append(f"<td{cls}>{c.mean:.4f} ± {c.std:.4f}{diff}</td>")
        tr, ev = times.get(v, (0.0, 0.0))
        rows.append(f"<tr><th>{e(v)}</th>{''.join(tds)}<td>{tr:.0f}</td><td>{ev:.0f}</td></tr>")
    png = base64.b64encode(plot.read_bytes()).decode() if plot.exists() else ""
    details = []
    for v in exp.variants:
        info = {"overrides": v.overrides, "build": v.build_key, "corpus": _corpus(out, v.build_key)}
        details.append(f"<details><summary>{e(v.name)}</summary><pre>{e(json.dumps(info, indent=2, default=str))}"
                       "</pre></details>")
    failed = "".join(f"<li>{e(r['variant'])} seed {r['seed']}: {e(r['error'])}</li>" for r in results if "error" in r)
    buf = io.StringIO()
    buf.write(f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(exp.name)}</title><style>
body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} th{{text-align:left}} .beyond{{background:#e8f4e8}}
pre{{background:#f6f6f6;padding:8px;overflow:auto}}</style></head><body>
<h1>Experiment {e(exp.name)}</h1><p>{e(exp.spec.description)}</p>
<p>recipe <code>{e(str(exp.recipe_path))}</code>, training <code>{e(str(exp.train_path))}</code>, tasks
<code>{e(str(exp.eval_path))}</code>; seeds {e(str(exp.seeds))}; base variant <b>{e(exp.spec.base)}</b>. A
difference to base is <i>beyond noise</i> when it exceeds twice its standard error over seeds.</p>
<table><tr><th>variant</th>{head}<th>train s</th><th>eval s</th></tr>{''.join(rows)}</table>
{f'<h2>Failed runs</h2><ul>{failed}</ul>' if failed else ''}
<h2>Plots</h2><img alt="scores per task" src="data:image/png;base64,{png}">
<h2>Variants: overrides and corpus</h2>{''.join(details)}</body></html>""")
    return buf.getvalue()
