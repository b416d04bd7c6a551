"""`datakit report`: one self-contained HTML page per build (or two builds side by side), offline.

`collect` gathers each section's data (manifest, published reports, DuckDB samples), `render` turns it into the
page with plotly figures whose JavaScript is inlined. Sections a build has no data for are left out.
"""
from __future__ import annotations

import os
from pathlib import Path

from datakit.report.collect import SAMPLE_ROWS, BuildData, LengthSettings, ReportError

REPORT_NAME = "report.html"

__all__ = ["REPORT_NAME", "BuildData", "LengthSettings", "ReportError", "write_report"]


def write_report(out: str | Path, dest: str | Path | None = None, compare: str | Path | None = None,
                 train_config: str | Path | None = None, sample_rows: int = SAMPLE_ROWS) -> Path:
    """Write the report of OUT's current build (against COMPARE's when given) to `dest` (default
    OUT/report.html, or OUT/compare.html) atomically; returns the path."""
    from datakit.report.render import compare as render_compare, single

    from jinja2 import UndefinedError

    from datakit.report.collect import collect, default_lengths, lengths_from_train_config

    settings = lengths_from_train_config(train_config) if train_config else default_lengths()
    data = collect(out, settings, sample_rows)
    other = collect(compare, settings, sample_rows) if compare is not None else None
    try:
        page = render_compare(data, other) if other is not None else single(data)
    except UndefinedError as exc:  # a manifest of another shape than this datakit writes
        raise ReportError(f"{out}: the manifest lacks what the report needs ({exc}); rebuild it with "
                          f"`datakit build RECIPE --out {out} --force`") from None
    dest = Path(dest) if dest is not None else Path(out) / ("compare.html" if compare is not None else REPORT_NAME)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, dest)
    return dest
