"""The report's plots: plotly figures built from the collected data (aggregated: bins and counts, never rows)."""
from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

BINS = 30
HEIGHT = 340
COLORS = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D")


def _layout(fig: go.Figure, title: str, height: int = HEIGHT, **kw: Any) -> go.Figure:
    fig.update_layout(title={"text": title, "x": 0.01}, height=height, template="plotly_white",
                      margin={"l": 50, "r": 20, "t": 50, "b": 50}, legend={"orientation": "h", "y": -0.2}, **kw)
    return fig


def stacked(rows: dict[str, dict[str, float]], title: str, x_title: str = "", y_title: str = "records") -> go.Figure:
    """A bar per row key, stacked by the inner keys (rows with nothing left out)."""
    rows = {r: inner for r, inner in rows.items() if any(inner.values())}
    keys = sorted({k for inner in rows.values() for k in inner})
    fig = go.Figure([go.Bar(name=k, x=list(rows), y=[rows[r].get(k, 0) for r in rows],
                            marker_color=COLORS[i % len(COLORS)]) for i, k in enumerate(keys)])
    return _layout(fig, title, barmode="stack", xaxis_title=x_title, yaxis_title=y_title)


def grouped(rows: dict[str, dict[str, float]], title: str, y_title: str = "records") -> go.Figure:
    """A group of bars per row key: one bar per inner key (e.g. build A and build B)."""
    fig = stacked(rows, title, y_title=y_title)
    return fig.update_layout(barmode="group")


def timings(stages: list[dict[str, Any]]) -> go.Figure:
    fig = go.Figure(go.Bar(x=[s["seconds"] for s in stages], y=[s["stage"] for s in stages], orientation="h",
                           marker_color=COLORS[0],
                           text=[f"{s['rows_per_s']:,} rows/s" if s["rows_per_s"] else "" for s in stages]))
    return _layout(fig, "Seconds per stage", height=max(220, 40 + 28 * len(stages)), xaxis_title="seconds",
                   yaxis={"autorange": "reversed"})


def similarity(similarity: dict[str, dict[str, Any]], builds: dict[str, dict[str, dict[str, Any]]] | None = None,
               limit: int = 12) -> go.Figure:
    """Per dataset: the histogram of query-positive and query-mined-negative cosine similarities. Negatives
    right of the positives are likely false negatives; far left, too easy. With `builds`, one line per build."""
    series = builds or {"": similarity}
    datasets = sorted({ds for sims in series.values() for ds in sims})[:limit]
    cols = min(3, len(datasets)) or 1
    rows = -(-len(datasets) // cols) or 1
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=datasets, shared_xaxes=True,
                        vertical_spacing=0.12 if rows > 1 else 0.2)
    for i, ds in enumerate(datasets):
        for b, (build, sims) in enumerate(series.items()):
            for c, (key, label) in enumerate((("query_positive", "query-positive"),
                                              ("query_mined_negative", "query-negative"))):
                hist = (sims.get(ds, {}).get(key) or {}).get("hist")
                if not hist:
                    continue
                counts = np.asarray(hist["counts"], float)
                edges = np.linspace(hist["lo"], hist["hi"], len(counts) + 1)
                share = counts / counts.sum() if counts.sum() else counts
                name = f"{label} {build}".strip()
                fig.add_trace(go.Scatter(x=(edges[:-1] + edges[1:]) / 2, y=share, name=name, legendgroup=name,
                                         showlegend=i == 0, mode="lines", line_shape="hvh",
                                         fill="tozeroy" if not builds else None,
                                         line={"color": COLORS[c], "dash": "dot" if b else "solid"}),
                              row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(range=[-0.2, 1.0])
    return _layout(fig, "Cosine similarity to the query (share of pairs)", height=60 + 220 * rows)


def lengths(fields: list[dict[str, Any]], builds: list[str] | None = None) -> go.Figure:
    """Per kind and field: the token-length histogram, with the trainer's max length as a dashed line.
    `fields` items may come from several builds (key `build`)."""
    panels = list(dict.fromkeys((f["kind"], f["field"]) for f in fields))
    cols = min(3, len(panels)) or 1
    rows = -(-len(panels) // cols) or 1
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"{k}.{f}" for k, f in panels],
                        vertical_spacing=0.12 if rows > 1 else 0.2)
    for i, panel in enumerate(panels):
        items = [f for f in fields if (f["kind"], f["field"]) == panel]
        limit = items[0]["limit"]
        top = max(limit * 1.25, max(np.percentile(f["lengths"], 99) for f in items)) + 1
        edges = np.linspace(0, top, BINS + 1)
        for b, item in enumerate(items):
            counts, _ = np.histogram(np.clip(item["lengths"], 0, top - 1e-9), bins=edges)
            name = item.get("build") or "records"
            fig.add_trace(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts / max(1, counts.sum()), name=name,
                                 legendgroup=name, showlegend=i == 0, opacity=0.75 if builds else 1.0,
                                 marker_color=COLORS[b % len(COLORS)], width=(edges[1] - edges[0]) * 0.95),
                          row=i // cols + 1, col=i % cols + 1)
        fig.add_vline(x=limit, line_dash="dash", line_color="#E45756", row=i // cols + 1, col=i % cols + 1)
    return _layout(fig, "Token lengths (share of the sample; dashed: the trainer's max length)",
                   height=60 + 230 * rows, barmode="overlay")
