"""What the audit report shows of one build, gathered as plain data.

Numbers come from the manifest and the reports published beside the shards (`dedup.json`, `contamination.json`);
examples, token lengths and lineage from records read through DuckDB with bounded samples, so gathering takes
seconds on any build size and the page stays small. A section whose data the build does not have is `None`.
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedkit.lengths import DEFAULT_QUERY_TEMPLATE, DOC_MAX_LENGTH, QUERY_MAX_LENGTH

from datakit.manifest import MANIFEST, InconsistentOutput, checked, typed
from datakit.manifest_schema import READ_STAGE, Manifest, stage_index

READ_FORMATS = (1,)  # manifest formats this report understands
_REQUIRED = ("recipe", "counts", "quarantined", "dropped", "steps", "timings_s", "negatives", "shards")
EXAMPLES = 3  # per reason / task / verdict
SAMPLE_ROWS = 5000  # records per kind whose token lengths are measured
HISTORIES = 2  # sampled records per kind whose whole lineage is shown
SHOWN = 600  # characters of a text shown in an example
MADE_BY = ("paraphrase", "augment")  # lineage steps that create records (besides adapter:*)
QUERY_FIELDS = {"retrieval": ("query",), "pair": ("text_a", "text_b"), "classification": ("text",)}
DOC_FIELDS = {"retrieval": ("positive", "negatives")}


class ReportError(ValueError):
    """A folder the report cannot describe: one line, no traceback."""


@dataclass
class LengthSettings:
    """How the trainer will see the texts: its tokenizer, prompt and truncation lengths."""

    tokenizer: str  # shown in the page
    tokenizer_path: str
    gguf_file: str | None = None
    query_max_length: int = QUERY_MAX_LENGTH
    doc_max_length: int = DOC_MAX_LENGTH
    query_template: str = DEFAULT_QUERY_TEMPLATE
    symmetric_instruction: bool = True
    model_dir: str | None = None  # the training config's exported model folder (its model card is shown)


@dataclass
class BuildData:
    out: Path
    build: Path
    manifest: Manifest
    sections: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.manifest.recipe.name} ({self.build.name})"


def load_build(out: str | Path) -> tuple[Path, Manifest]:
    """(build folder, typed manifest) of OUT, checked against its shards; `ReportError` with one line
    otherwise (an older or newer format, or the field a reader needs that the manifest lacks)."""
    try:
        build = checked(out)
    except (FileNotFoundError, InconsistentOutput) as exc:
        raise ReportError(str(exc)) from None
    path = build / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: not a readable manifest ({exc})") from None
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    missing = [k for k in _REQUIRED if k not in manifest] if isinstance(manifest, dict) else list(_REQUIRED)
    if isinstance(fmt, int) and fmt > max(READ_FORMATS):
        raise ReportError(f"{path}: manifest format {fmt} is newer than this datakit reads ({max(READ_FORMATS)}); "
                          "upgrade datakit")
    if fmt not in READ_FORMATS or missing:
        what = f"format {fmt}" if fmt is not None else "no format number"
        lacks = f", lacks {', '.join(missing)}" if missing else ""
        raise ReportError(f"{path}: a manifest from an older datakit ({what}{lacks}); rebuild it with "
                          f"`datakit build RECIPE --out {out} --force`")
    try:
        return build, typed(manifest, path)
    except InconsistentOutput as exc:
        raise ReportError(str(exc)) from None


def collect(out: str | Path, lengths: LengthSettings | None = None, sample_rows: int = SAMPLE_ROWS) -> BuildData:
    """Every section of the report for the current build of OUT."""
    from datakit.query import connect

    build, manifest = load_build(out)
    data = BuildData(Path(out), build, manifest)
    con = connect(build, check=False)  # load_build checked it
    try:
        data.sections = {
            "overview": overview(manifest),
            "quarantine": quarantine(manifest, con),
            "dedup": dedup(manifest, build),
            "contamination": contamination(manifest, build),
            "negatives": negatives(manifest),
            "synthesis": synthesis(manifest),
            "lengths": token_lengths(manifest, con, lengths or default_lengths(), sample_rows),
            "lineage": lineage(manifest, con),
            "cards": cards(build, (lengths or default_lengths()).model_dir),
        }
    finally:
        con.close()
    return data


# ---------------------------------------------------------------------------------------------- sections
def overview(m: Manifest) -> dict[str, Any]:
    stages = []
    for name, seconds in m.timings_s.items():
        rows = None
        index = stage_index(name)
        if name == READ_STAGE:
            rows = sum(m.rows_read.values())
        elif index is not None and index < len(m.steps):
            report = m.steps[index].report
            rows = report.get("kept", 0) + sum(report.get("dropped", {}).values())
        stages.append({"stage": name, "seconds": seconds, "rows": rows,
                       "rows_per_s": round(rows / seconds, 1) if rows is not None and seconds else None})
    inputs = []
    for source, spec in m.inputs.items():
        where = spec.get("sql") or ", ".join(f["path"] for f in spec.get("files", [])) or spec.get("hf", "")
        inputs.append({"source": source, "from": str(where), "rows_read": m.rows_read.get(source)})
    counts = [{"kind": kind, "dataset": ds, "records": n}
              for kind, per in m.counts.items() for ds, n in sorted(per.items())]
    return {"recipe": m.recipe.model_dump(), "created": m.created, "duration_s": m.duration_s,
            "executor": m.executor.get("name"), "versions": m.versions, "inputs": inputs,
            "stages": stages, "counts": counts, "total": m.records,
            "rows_read": sum(m.rows_read.values()), "warnings": m.warnings, "quarantined": m.quarantined.n}


def quarantine(m: Manifest, con) -> dict[str, Any] | None:
    q = m.quarantined
    if not q.n and not q.lost_rows:
        return None
    rows = con.execute(
        f"""SELECT reason, dataset, file, "row", field, detail, raw FROM (
              SELECT *, row_number() OVER (PARTITION BY reason ORDER BY dataset, file, "row") AS k FROM quarantine)
            WHERE k <= {EXAMPLES} ORDER BY reason, dataset, file, "row" """).fetchall()
    names = ("reason", "dataset", "file", "row", "field", "detail", "raw")
    return {"n": q.n, "by_dataset": q.by_dataset, "reasons": q.reasons,
            "lost_rows": q.lost_rows, "examples": [_short(dict(zip(names, r))) for r in rows]}


def dedup(m: Manifest, build: Path) -> dict[str, Any] | None:
    steps = []
    for i, step in enumerate(m.steps):
        if step.type != "dedup":
            continue
        cfg, report = step.config, step.report
        details = _artifact(build, cfg.get("report", "dedup.json"), m)
        steps.append({"step": f"{i}:dedup", "method": cfg.get("method"), "threshold": cfg.get("threshold"),
                      "scope": cfg.get("scope"), "kept": report.get("kept"), "dropped": report.get("dropped", {}),
                      "by_dataset": report.get("dropped_by_dataset") or details.get("dropped_by_dataset", {}),
                      "label_conflicts": report.get("label_conflicts", details.get("label_conflicts", 0)),
                      "clusters": details.get("clusters", []), "conflicts": details.get("label_conflict_examples", []),
                      "warnings": details.get("warnings", [])})
    return {"steps": steps} if steps else None


def contamination(m: Manifest, build: Path) -> dict[str, Any] | None:
    summary = m.contamination
    if not summary:
        return None
    step = next((s for s in m.steps if s.type == "decontaminate"), None)
    details = _artifact(build, (step.config if step else {}).get("report", "contamination.json"), m)
    examples = []
    for task, entry in details.get("tasks", {}).items():
        for ex in entry.get("examples", [])[:EXAMPLES]:
            ours, theirs = overlap(ex.get("text", ""), ex.get("benchmark_text", ""))
            blank = dict.fromkeys(("id", "dataset", "field", "benchmark", "benchmark_field", "match", "score"), "")
            examples.append({**blank, **ex, "task": task, "ours": ours, "theirs": theirs})
    return {"action": summary.action, "packs": summary.packs, "checked": summary.records_checked,
            "contaminated": summary.contaminated, "by_match": summary.by_match, "by_dataset": summary.by_dataset,
            "by_task": {t: e.get("by_dataset", {}) for t, e in details.get("tasks", {}).items()}
            or {t: {"all": n} for t, n in summary.by_task.items()},
            "examples": examples}


def negatives(m: Manifest) -> dict[str, Any] | None:
    mix = m.negatives
    mining = m.mining or {}
    similarity = mining.get("similarity", {})
    if not any(e.get("given", 0) + e.get("mined", 0) + e.get("llm", 0) for e in mix.values()) and not similarity:
        return None
    rows = [{"dataset": ds, **dict.fromkeys(("records", "given", "mined", "llm", "records_short"), 0), **e}
            for ds, e in sorted(mix.items())]
    mine = next((s for s in m.steps if s.type == "mine_negatives"), None)
    return {"mix": rows, "model": mining.get("model"), "similarity": similarity, "search": mining.get("search"),
            "target": mine.config.get("negatives") if mine else None}


def synthesis(m: Manifest) -> dict[str, Any] | None:
    if not m.synthesis:
        return None
    blank = {"model": "", "prompt": "", "records_selected": None, "calls": None, "cache_hits": None, "failed": None,
             "prompt_tokens": None, "completion_tokens": None, "cost_usd": None, "kept": 0, "dropped": {}}
    steps = []
    for name, entry in m.synthesis.items():
        e = entry.model_dump(exclude_none=True)
        steps.append({"step": name, **blank, **e, "examples": [_short(x) for x in e.get("examples", [])]})
    return {"steps": steps, "budget": m.llm_budget.model_dump() if m.llm_budget else None}


def token_lengths(m: Manifest, con, settings: LengthSettings, sample_rows: int) -> dict[str, Any] | None:
    """Token lengths (as the trainer will tokenize them: prompt included, special tokens counted) of a sample
    of each kind, and the share its max lengths would truncate."""
    kinds = [k for k in QUERY_FIELDS if m.counts.get(k)]
    if not kinds:
        return None
    tokenizer = load_tokenizer(settings)
    fields = []
    for kind in kinds:
        total = sum(m.counts[kind].values())
        cols = ", ".join(("instruction",) + QUERY_FIELDS[kind] + DOC_FIELDS.get(kind, ()))
        rows = con.execute(f"SELECT {cols} FROM {kind} USING SAMPLE reservoir({int(sample_rows)} ROWS) "
                           "REPEATABLE (7)").fetchall()
        names = cols.split(", ")
        records = [dict(zip(names, r)) for r in rows]
        for name in QUERY_FIELDS[kind] + DOC_FIELDS.get(kind, ()):
            prompted = name in QUERY_FIELDS[kind] and (kind != "pair" or settings.symmetric_instruction)
            if name == "negatives":
                texts = [t for r in records for t in (r[name] or [])][:sample_rows]
            else:
                texts = [(_prompt(settings, r["instruction"]) if prompted else "") + (r[name] or "")
                         for r in records]
            if not texts:
                continue
            counts = np.array([len(ids) for ids in tokenizer(texts, add_special_tokens=True, truncation=False,
                                                             verbose=False)["input_ids"]])
            limit = settings.doc_max_length if name in DOC_FIELDS.get(kind, ()) else settings.query_max_length
            fields.append({"kind": kind, "field": name, "records": total, "sampled": len(texts),
                           "limit": limit, "prompted": prompted, "lengths": counts.tolist(),
                           "p50": int(np.percentile(counts, 50)), "p90": int(np.percentile(counts, 90)),
                           "max": int(counts.max()), "truncated": round(float((counts > limit).mean()), 4)})
    return {"tokenizer": settings.tokenizer, "query_max_length": settings.query_max_length,
            "doc_max_length": settings.doc_max_length, "fields": fields}


def lineage(m: Manifest, con) -> dict[str, Any] | None:
    kinds = [k for k in QUERY_FIELDS if m.counts.get(k)]
    if not kinds:
        return None
    steps = []
    for kind in kinds:
        for step, n in con.execute(
                f"SELECT e.step, count(DISTINCT id) FROM (SELECT id, unnest(lineage.events) AS e FROM {kind}) "
                "GROUP BY 1 ORDER BY 2 DESC, 1").fetchall():
            made = step.startswith("adapter:") or step in MADE_BY
            steps.append({"kind": kind, "step": step, "records": n, "effect": "made" if made else "changed"})
    histories = []
    text = {"retrieval": "query", "pair": "text_a", "classification": "text"}
    for kind in kinds:
        picks = con.execute(
            f"""(SELECT id, dataset, {text[kind]}, lineage FROM {kind} ORDER BY len(lineage.events) DESC, id LIMIT 1)
                UNION ALL
                (SELECT id, dataset, {text[kind]}, lineage FROM {kind} WHERE lineage.parent_id <> ''
                 ORDER BY len(lineage.events) DESC, id LIMIT 1)""").fetchall()
        seen = set()
        for rid, ds, value, lin in picks[:HISTORIES]:
            if rid in seen:
                continue
            seen.add(rid)
            histories.append({"kind": kind, "id": rid, "dataset": ds, "text": (value or "")[:SHOWN],
                              "source": lin["source"], "file": lin["file"], "row": lin["row"],
                              "parent_id": lin["parent_id"], "events": lin["events"]})
    return {"steps": steps, "histories": histories}


def cards(build: Path, model_dir: str | None) -> dict[str, Any] | None:
    """The corpus card (README.md of the build) and, with a training config whose model was exported, its model
    card: their Markdown bodies rendered to HTML (raw HTML in them escaped, not run)."""
    out = {}
    for key, path in (("corpus", build / "README.md"), ("model", Path(model_dir) / "README.md" if model_dir else None)):
        if path is not None and path.is_file():
            out[key] = {"path": str(path), "html": render_markdown(path.read_text(encoding="utf-8"))}
    return out or None


def render_markdown(text: str) -> str:
    """A card's Markdown body (its YAML header dropped) as HTML; tables on, raw HTML escaped."""
    from markdown_it import MarkdownIt

    if text.startswith("---\n"):
        text = text.split("\n---\n", 1)[-1]
    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


# ---------------------------------------------------------------------------------------------- parts
def default_lengths() -> LengthSettings:
    """The packaged MiniLM tokenizer and the trainer's default lengths and prompt."""
    from datakit.engines.embed import DEFAULT_MODEL, resolve_model

    return LengthSettings(tokenizer=DEFAULT_MODEL, tokenizer_path=resolve_model(DEFAULT_MODEL))


def lengths_from_train_config(path: str | Path) -> LengthSettings:
    """The tokenizer, prompt and max lengths of a `trainer` config file (only those keys are read)."""
    from embedkit.lengths import read_train_lengths
    from embedkit.models import resolve_name

    try:
        cfg = read_train_lengths(path)
    except ValueError as exc:
        raise ReportError(f"not a usable training config: {exc}") from None
    folder, gguf = resolve_name(cfg.model.name_or_path, cfg.model.gguf_file)
    d = cfg.data
    return LengthSettings(tokenizer=cfg.model.name_or_path, tokenizer_path=folder, gguf_file=gguf,
                          query_max_length=d.query_max_length, doc_max_length=d.doc_max_length,
                          query_template=d.query_template, symmetric_instruction=d.symmetric_instruction,
                          model_dir=str(Path(cfg.output_dir) / "model") if cfg.output_dir else None)


def load_tokenizer(settings: LengthSettings):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "sequence longer than the model's maximum": measuring that is the point
    try:
        kwargs = {"gguf_file": settings.gguf_file} if settings.gguf_file else {}
        return AutoTokenizer.from_pretrained(settings.tokenizer_path, **kwargs)
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot load the tokenizer of {settings.tokenizer!r} ({exc})".splitlines()[0]) from None


def _prompt(settings: LengthSettings, instruction: str | None) -> str:
    return settings.query_template.format(instruction=instruction) if instruction else ""


_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]|\w+|[^\w\s]", re.UNICODE)


def overlap(ours: str, theirs: str, min_tokens: int = 3) -> tuple[list[tuple[str, bool]], list[tuple[str, bool]]]:
    """Both texts as (segment, shared) runs: runs of at least `min_tokens` tokens (words; CJK characters one
    by one) that appear in both, in order, are marked shared."""
    a = [(m.start(), m.end()) for m in _TOKEN.finditer(ours)]
    b = [(m.start(), m.end()) for m in _TOKEN.finditer(theirs)]
    norm_a = [ours[s:e].casefold() for s, e in a]
    norm_b = [theirs[s:e].casefold() for s, e in b]
    blocks = [blk for blk in difflib.SequenceMatcher(None, norm_a, norm_b, autojunk=False).get_matching_blocks()
              if blk.size >= min(min_tokens, len(a), len(b)) and blk.size]
    return (_segments(ours, a, [(blk.a, blk.size) for blk in blocks]),
            _segments(theirs, b, [(blk.b, blk.size) for blk in blocks]))


def _segments(text: str, tokens: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[tuple[str, bool]]:
    out, pos = [], 0
    for start, size in sorted(spans):
        lo, hi = tokens[start][0], tokens[start + size - 1][1]
        if lo > pos:
            out.append((text[pos:lo], False))
        out.append((text[lo:hi], True))
        pos = hi
    if pos < len(text):
        out.append((text[pos:], False))
    return out


def _artifact(build: Path, name: str, m: Manifest) -> dict[str, Any]:
    if name not in m.artifacts or not (build / name).is_file():
        return {}
    try:
        return json.loads((build / name).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"{build / name}: not readable ({exc})") from None


def _short(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v[:SHOWN] + "…" if isinstance(v, str) and len(v) > SHOWN else v) for k, v in row.items()}
