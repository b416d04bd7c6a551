"""What a corpus is, for people and for model cards: its lineage and its benchmark overlap, read from its manifest
(and its parents' manifests), and the corpus card (README.md in the Hugging Face dataset-card format) written
with every build.

Pure Python at import (mteb is imported when used): the trainer reads a corpus's facts through here to write the
model card and mteb metadata of a model trained on it. The corpus card's YAML header is written with PyYAML in
the layout huggingface_hub's DatasetCardData writes (tests read it back with huggingface_hub and `datasets`):
importing huggingface_hub cost every build 0.1 s.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from datakit.manifest import MANIFEST, build_dir, sha256_file
from datakit.manifest_schema import Manifest, stage_key

CARD = "README.md"
KIND_NAMES = {"retrieval": "retrieval (query, positive, negatives)", "pair": "pair (text pair + score)",
              "classification": "classification (text + label)"}


@dataclass
class Overlap:
    """One benchmark task (split) of a pack the corpus was checked against."""

    benchmark: str  # pack/task/split
    task: str
    split: str
    test_texts: int | None
    matched: dict[str, int] = field(default_factory=dict)  # records by their best match: exact, minhash, ngram
    action: str = "drop"  # what was done with them: drop (removed) or flag (kept, marked)
    mteb: bool | None = None  # an MTEB task name (None: mteb not installed)

    @property
    def records(self) -> int:
        return sum(self.matched.values())


def typed(manifest: Manifest | dict[str, Any]) -> Manifest:
    """A manifest as `Manifest` (a dict as written by the pipeline or read from JSON is validated)."""
    return manifest if isinstance(manifest, Manifest) else Manifest.model_validate(manifest)


def manifest_chain(manifest: Manifest | dict[str, Any]) -> Iterator[Manifest]:
    """The manifest, then the manifests of the outputs it was made from (`datakit dedup/decontaminate IN --out
    OUT` records its input as `parent`), as long as they can still be read unchanged and are manifests."""
    current: Manifest | None = typed(manifest)
    seen = 0
    while current is not None and seen < 20:
        yield current
        seen += 1
        current = _parent(current.parent or {})


def _parent(parent: dict[str, Any]) -> Manifest | None:
    """The manifest a `parent` entry points at (inline since 2026-12-07, or by path and digest), or None."""
    try:
        if isinstance(parent.get("manifest"), dict):
            return Manifest.model_validate(parent["manifest"])
        if not parent.get("path"):
            return None
        folder = build_dir(parent["path"])
        if sha256_file(folder / MANIFEST) != parent.get("manifest_sha256"):
            return None  # the input was rebuilt since: its manifest no longer describes this corpus
        return Manifest.model_validate(json.loads((folder / MANIFEST).read_text(encoding="utf-8")))
    except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
        return None


def overlap(manifest: Manifest | dict[str, Any]) -> list[Overlap] | None:
    """Every task of every pack the corpus (or a corpus it was made from) was checked against, with the training
    records matched and what was done with them; None when it was never checked against a benchmark."""
    rows: dict[str, Overlap] = {}
    audited = False
    for m in manifest_chain(manifest):
        c = m.contamination
        if c is None:
            continue
        audited = True
        tasks = dict(c.pack_tasks)
        for key in c.by_task:
            tasks.setdefault(key, None)  # manifests before pack_tasks existed: only matched tasks are known
        for key, n_texts in tasks.items():
            if key in rows:
                continue
            parts = key.split("/")
            task, split = (parts[1], "/".join(parts[2:])) if len(parts) >= 3 else (key, "")
            matched = c.by_task_match.get(key) or ({"unknown": c.by_task[key]} if key in c.by_task else {})
            rows[key] = Overlap(key, task, split, n_texts, dict(matched), c.action, is_mteb_task(task))
    return list(rows.values()) if audited else None


@lru_cache(maxsize=None)
def is_mteb_task(name: str) -> bool | None:
    """Whether mteb knows a task by this name (offline: mteb's registry ships with the package)."""
    try:
        import mteb
    except ImportError:
        return None
    try:
        mteb.get_task(name)
        return True
    except (KeyError, ValueError):
        return False


@lru_cache(maxsize=1)
def _mteb_by_dataset_path() -> dict[str, list[str]]:
    import mteb

    out: dict[str, list[str]] = {}
    for task in mteb.get_tasks():
        path = (task.metadata.dataset or {}).get("path")
        if path:
            out.setdefault(path, []).append(task.metadata.name)
    return out


def mteb_tasks_of_hf(dataset_path: str) -> list[str]:
    """MTEB tasks whose data is this Hugging Face dataset (by mteb's own metadata); [] without mteb."""
    try:
        return sorted(_mteb_by_dataset_path().get(dataset_path, []))
    except ImportError:
        return []


def records_per_dataset(manifest: Manifest | dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for per in typed(manifest).counts.values():
        for ds, n in per.items():
            out[ds] = out.get(ds, 0) + n
    return out


def training_datasets(manifest: Manifest | dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The MTEB tasks a model trained on this corpus was trained on, derived, never typed: {task: {"from":
    [why...], "records": n}}. Why: `declared` (a source says it is that task's data: `mteb_task:` on the
    source, or an `hf:` source whose dataset mteb lists as that task's), or `in_corpus` (the corpus still holds
    that task's evaluation texts: records flagged, not dropped, by decontamination)."""
    out: dict[str, dict[str, Any]] = {}
    chain = list(manifest_chain(manifest))
    counts = records_per_dataset(manifest)

    def add(task: str, why: str, n: int) -> None:
        entry = out.setdefault(task, {"from": [], "records": 0})
        if why not in entry["from"]:
            entry["from"].append(why)
        entry["records"] += n

    inputs = next((m.inputs for m in reversed(chain) if "shards" not in m.inputs), {})
    for source, spec in inputs.items():
        if not isinstance(spec, dict):
            continue
        declared = [spec["mteb_task"]] if spec.get("mteb_task") else []
        if "hf" in spec and isinstance(spec["hf"], dict):
            declared += mteb_tasks_of_hf(spec["hf"].get("path", ""))
        for task in dict.fromkeys(declared):
            add(task, "declared", counts.get(source, 0))
    for m in chain:
        c = m.contamination
        if c is None or c.action != "flag":
            continue
        for key, n in c.by_task.items():
            task = key.split("/")[1] if key.count("/") >= 2 else key
            if is_mteb_task(task):
                add(task, "in_corpus", n)
    return out


# ------------------------------------------------------------------------------------------------ the card
def _table(head: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return (f"{v:,}" if isinstance(v, int) else str(v)).replace("|", "\\|").replace("\n", " ")

    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows])


def overlap_section(rows: list[Overlap] | None, heading: str = "## Benchmark overlap") -> str:
    """The overlap table (one row per task), or the plain statement that it was never checked."""
    if rows is None:
        return (f"{heading}\n\nNot audited against any benchmark: this corpus was never checked for benchmark test "
                "texts (`decontaminate` step or `datakit decontaminate`), so nothing is known of its overlap.\n")
    body = _table(["benchmark task", "split", "MTEB task", "test texts", "records matched", "exact", "near (MinHash)",
                   "n-gram", "done"],
                  [[r.task, r.split, {True: "yes", False: "not an MTEB task", None: "unknown"}[r.mteb],
                    r.test_texts if r.test_texts is not None else "?", r.records, r.matched.get("exact", 0),
                    r.matched.get("minhash", 0), r.matched.get("ngram", 0),
                    ("dropped" if r.action == "drop" else "flagged, kept") if r.records else "-"] for r in rows])
    return (f"{heading}\n\nEvery task of every benchmark pack the corpus was checked against. A record counts once "
            "per task, under its best match (exact text, MinHash Jaccard at the step's threshold, or a shared long "
            f"n-gram).\n\n{body}\n")


def lineage_sections(manifest: Manifest | dict[str, Any]) -> str:
    """Sources, steps and what they did (synthesis by generator, hard negatives), through the parent chain."""
    parts = []
    chain = list(manifest_chain(manifest))
    origin = chain[-1]
    inputs = origin.inputs
    rows = []
    for name, spec in inputs.items():
        where = (", ".join(f"{Path(f['path']).name} ({f['bytes']:,} B" + (f", xxh3_128 {f['xxh3_128'][:12]}" if
                                                                          f.get("xxh3_128") else "") + ")"
                           for f in spec.get("files", [])) if "files" in spec else
                 f"hf:{spec['hf']['path']}" if "hf" in spec else "sql" if "sql" in spec else json.dumps(spec))
        bad = origin.quarantined.by_dataset.get(name, {})
        rows.append([name, spec.get("adapter", "?"), where, origin.rows_read.get(name, 0),
                     ", ".join(f"{r} {n}" for r, n in bad.items()) or "none"])
    parts.append("## Sources\n\n" + _table(["source (dataset)", "adapter", "read from", "rows read", "quarantined"],
                                           rows) + "\n")
    steps = []
    for m in reversed(chain):
        for i, s in enumerate(m.steps):
            dropped = m.dropped.get(stage_key(i, s.type), {})
            steps.append([len(steps), s.type, s.report.get("kept", ""),
                          ", ".join(f"{r} {n}" for r, n in dropped.items()) or "none"])
    if steps:
        parts.append("## Steps\n\n" + _table(["#", "step", "records kept", "dropped"], steps) + "\n")
    synth = [[step, e.model, e.prompt, e.kept, ", ".join(f"{r} {n}" for r, n in e.dropped.items()) or "none"]
             for m in reversed(chain) for step, e in m.synthesis.items()]
    if synth:
        parts.append("## Synthesis\n\n" + _table(["step", "generator model", "prompt", "outputs kept", "dropped"],
                                                 synth) + "\n")
    for m in chain:
        for step, e in m.synthesis.items():
            held, trip = getattr(e, "heldout", None), getattr(e, "round_trip", None)  # generate_queries only
            if trip:
                parts.append(f"## Generated queries ({step})\n\nQueries written by {e.model} for the corpus's "
                             f"own passages, kept only when a retriever ranks their passage within the top "
                             f"{trip.get('k')}: {trip.get('kept', 0):,} of {trip.get('filtered', 0):,} "
                             f"({(trip.get('keep_rate') or 0):.0%}).\n")
            if held:
                parts.append(f"An evaluation split was held out: {held.get('queries', 0):,} generated queries of "
                             f"{held.get('documents', 0):,} documents ({held.get('share', 0):.0%} of the documents, "
                             "chosen by document id). No passage of a held-out document has a training query, and "
                             "no held-out query is a training record: the split is decontaminated from training by "
                             "construction. It is `heldout/tasks.yaml` (`trainer eval MODEL --tasks "
                             "heldout/tasks.yaml`).\n")
    negs = chain[0].negatives
    if negs:
        parts.append("## Hard negatives\n\n" + _table(
            ["dataset", "records", "given", "mined", "LLM", "short of target"],
            [[d, v.get("records", 0), v.get("given", 0), v.get("mined", 0), v.get("llm", 0), v.get("records_short", 0)]
             for d, v in negs.items()]) + "\n")
    return "\n".join(parts)


def corpus_card(manifest: Manifest | dict[str, Any], out_dir: str | Path) -> str:
    """README.md for a build: the dataset-card YAML (its `configs:` let `datasets.load_dataset(OUT, KIND)` read
    each record kind from the shards), then what the corpus holds, where it came from and its benchmark overlap."""
    import yaml

    m = typed(manifest)
    kinds = sorted({s.kind for s in m.shards})
    data = {"pretty_name": m.recipe.name, "tags": ["embedkit", "datakit", "text-embeddings"],
            "configs": [{"config_name": k, "data_files": [{"split": "train", "path": f"{k}/*.arrow"}]} for k in kinds]}
    recipe = m.recipe
    version = m.versions.get("embedkit", "?")
    counts = [[kind, ds, n] for kind, per in m.counts.items() for ds, n in per.items()]
    command = (f"datakit build {recipe.path} --out {out_dir}" if recipe.path else
               f"datakit {'/'.join(s.type for s in m.steps)} {(m.parent or {}).get('path')} --out {out_dir}")
    warnings = "".join(f"- {w}\n" for w in m.warnings)
    body = f"""
# {recipe.name}

A text-embedding training corpus built by datakit {version} (embedkit) from recipe `{recipe.name}`
(sha256 `{recipe.sha256[:16]}`), {m.created}. Reproduce it with `{command}`.

## Records

{_table(["kind", "dataset", "records"], counts)}

Load a kind with `datasets.load_dataset("{out_dir}", "retrieval")` (one config per kind: {", ".join(kinds)}), or
query every kind with DuckDB: `datakit sql {out_dir} "SELECT dataset, count(*) FROM retrieval GROUP BY 1"`.

{lineage_sections(m)}
{overlap_section(overlap(m))}
{"## Warnings" + chr(10) + chr(10) + warnings if warnings else ""}"""
    header = yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip("\n")
    return f"---\n{header}\n---\n{body}"
