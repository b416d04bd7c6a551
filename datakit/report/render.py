"""The report page: one self-contained HTML file (plotly.js inlined, no network), every data text escaped."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from datakit.report import plots
from datakit.report.collect import BuildData

_ENV = Environment(loader=FileSystemLoader(Path(__file__).parent), autoescape=True, undefined=StrictUndefined,
                   trim_blocks=True, lstrip_blocks=True)


def figure(fig, name: str) -> Markup:
    """A plotly figure as a div and the script that draws it. The figure's JSON is made safe inside <script>
    (every <, > and & as a JSON escape), so a dataset called `</script>` stays text."""
    spec = fig.to_json(engine="json")
    spec = spec.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    config = '{"displaylogo": false, "responsive": true}'
    return Markup(f'<div class="plot" id="fig-{name}"></div>\n<script>(function () {{ var f = {spec}; '
                  f'Plotly.newPlot("fig-{name}", f.data, f.layout, {config}); }})();</script>')


def single(data: BuildData) -> str:
    s = data.sections
    figs: dict[str, Markup] = {}
    ov = s["overview"]
    if ov["stages"]:
        figs["timings"] = figure(plots.timings(ov["stages"]), "timings")
    per_ds: dict[str, dict[str, int]] = {}
    for c in ov["counts"]:
        per_ds.setdefault(c["dataset"], {})[c["kind"]] = c["records"]
    if per_ds:
        figs["counts"] = figure(plots.stacked(per_ds, "Records per dataset and kind"), "counts")
    if s["quarantine"] and s["quarantine"]["by_dataset"]:
        figs["quarantine"] = figure(plots.stacked(s["quarantine"]["by_dataset"], "Quarantined rows per dataset",
                                                  y_title="rows"), "quarantine")
    if s["dedup"]:
        merged: dict[str, dict[str, int]] = {}
        for step in s["dedup"]["steps"]:
            for ds, reasons in step["by_dataset"].items():
                for reason, n in reasons.items():
                    merged.setdefault(ds, {})[f"{step['step']} {reason}"] = n
        if merged:
            figs["dedup"] = figure(plots.stacked(merged, "Duplicates dropped per dataset"), "dedup")
    if s["contamination"] and s["contamination"]["by_task"]:
        figs["contamination"] = figure(plots.stacked(s["contamination"]["by_task"],
                                                     "Contaminated records per benchmark task and split"),
                                       "contamination")
    if s["negatives"]:
        mix = {r["dataset"]: {k: r.get(k, 0) for k in ("given", "mined", "llm")} for r in s["negatives"]["mix"]}
        if mix:
            figs["negatives"] = figure(plots.stacked(mix, "Hard negatives per dataset, by origin",
                                                     y_title="negatives"), "negatives")
        if s["negatives"]["similarity"]:
            figs["similarity"] = figure(plots.similarity(s["negatives"]["similarity"]), "similarity")
    if s["synthesis"]:
        out = {st["step"]: {"kept": st.get("kept", 0), **st.get("dropped", {})} for st in s["synthesis"]["steps"]}
        figs["synthesis"] = figure(plots.stacked(out, "Generated texts: kept and dropped by reason",
                                                 y_title="texts"), "synthesis")
    if s["lengths"] and s["lengths"]["fields"]:
        figs["lengths"] = figure(plots.lengths(s["lengths"]["fields"]), "lengths")
    if s["lineage"] and s["lineage"]["steps"]:
        steps: dict[str, dict[str, int]] = {}
        for st in s["lineage"]["steps"]:
            steps.setdefault(st["step"], {})[f"{st['kind']} ({st['effect']})"] = st["records"]
        figs["lineage"] = figure(plots.stacked(steps, "Records each step made or changed", y_title="records"),
                                 "lineage")
    return _page("single", data=data, s=s, figs=figs)


def compare(a: BuildData, b: BuildData) -> str:
    """Two builds side by side: every number with both values and the difference, changed rows marked."""
    la, lb = f"A: {a.name}", f"B: {b.name}"
    tables = {
        "counts": _diff(_counts(a), _counts(b)),
        "quarantine": _diff(_nested(a.manifest.quarantined.by_dataset), _nested(b.manifest.quarantined.by_dataset)),
        "dropped": _diff(_nested(a.manifest.dropped), _nested(b.manifest.dropped)),
        "negatives": _diff(_negatives(a), _negatives(b)),
        "similarity": _diff(_similarity(a), _similarity(b)),
        "synthesis": _diff(_synthesis(a), _synthesis(b)),
        "contamination": _diff(_contamination(a), _contamination(b)),
        "lengths": _diff(_lengths(a), _lengths(b)),
    }
    figs: dict[str, Markup] = {}
    per_ds: dict[str, dict[str, int]] = {}
    for row in tables["counts"]:
        per_ds.setdefault(f"{row['key'][0]}/{row['key'][1]}", {}).update({la: row["a"] or 0, lb: row["b"] or 0})
    if per_ds:
        figs["counts"] = figure(plots.grouped(per_ds, "Records per kind and dataset"), "counts")
    sims = {la: (a.sections["negatives"] or {}).get("similarity", {}),
            lb: (b.sections["negatives"] or {}).get("similarity", {})}
    if any(sims.values()):
        figs["similarity"] = figure(plots.similarity({}, builds=sims), "similarity")
    fields = [{**f, "build": label} for label, d in ((la, a), (lb, b))
              for f in ((d.sections["lengths"] or {}).get("fields") or [])]
    if fields:
        figs["lengths"] = figure(plots.lengths(fields, builds=[la, lb]), "lengths")
    changed = sum(r["changed"] for rows in tables.values() for r in rows)
    return _page("compare", a=a, b=b, la=la, lb=lb, tables=tables, figs=figs, changed=changed)


def _page(mode: str, **context: Any) -> str:
    from plotly.offline import get_plotlyjs

    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return _ENV.get_template("page.html.j2").render(mode=mode, plotly_js=Markup(get_plotlyjs()), generated=now,
                                                    **context)


# ---------------------------------------------------------------------------------------------- comparable numbers
Key = tuple[str, ...]


def _diff(a: dict[Key, float], b: dict[Key, float]) -> list[dict[str, Any]]:
    rows = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        delta = (y or 0) - (x or 0)
        rows.append({"key": key, "a": x, "b": y, "delta": round(delta, 4), "changed": x != y,
                     "rel": round(delta / x, 3) if x else None})
    return rows


def _counts(d: BuildData) -> dict[Key, float]:
    return {(kind, ds): n for kind, per in d.manifest.counts.items() for ds, n in per.items()}


def _nested(mapping: dict[str, dict[str, float]]) -> dict[Key, float]:
    return {(outer, inner): n for outer, per in mapping.items() for inner, n in (per or {}).items()}


def _negatives(d: BuildData) -> dict[Key, float]:
    return {(ds, k): e.get(k, 0) for ds, e in d.manifest.negatives.items()
            for k in ("records", "given", "mined", "llm", "records_short")}


def _similarity(d: BuildData) -> dict[Key, float]:
    sims = (d.manifest.mining or {}).get("similarity", {})
    return {(ds, pair, stat): v[stat] for ds, per in sims.items() for pair, v in per.items()
            for stat in ("p10", "p50", "p90") if stat in v}


def _synthesis(d: BuildData) -> dict[Key, float]:
    out: dict[Key, float] = {}
    for step, entry in d.manifest.synthesis.items():
        e = entry.model_dump(exclude_none=True)
        for k in ("records_selected", "calls", "cache_hits", "failed", "prompt_tokens", "completion_tokens",
                  "cost_usd", "kept"):
            if k in e:
                out[(step, k)] = e[k]
        for reason, n in e.get("dropped", {}).items():
            out[(step, f"dropped {reason}")] = n
    return out


def _contamination(d: BuildData) -> dict[Key, float]:
    c = d.manifest.contamination
    if c is None:
        return {}
    return {**{("task", t): n for t, n in c.by_task.items()}, **{("dataset", ds): n for ds, n in c.by_dataset.items()}}


def _lengths(d: BuildData) -> dict[Key, float]:
    return {(f"{f['kind']}.{f['field']}", stat): f[stat] for f in ((d.sections["lengths"] or {}).get("fields") or [])
            for stat in ("p50", "p90", "max", "truncated")}
