"""Local task data -> mteb task objects, so that mteb's own evaluators and metric code score them.

Rows are read through datakit's source readers and adapters (the recipe's syntax, parsed once): a row with an
empty text, a missing field or a bad score is skipped and counted with its reason, never a crash. Qrels that
name a query or a document the task does not have are counted and left out.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from datakit.sources import Sandbox
from trainer.eval.taskfile import MAIN_SCORES, ROLES, TaskSpec

_MTEB_TYPE = {"sts": "STS", "pair_classification": "PairClassification", "classification": "Classification",
              "clustering": "Clustering", "retrieval": "Retrieval", "reranking": "Reranking"}
_CATEGORY = {"classification": "t2c", "clustering": "t2c"}
EXAMPLES = 5


@dataclass
class DataReport:
    """What reading a task's data skipped, by reason, with a few examples (file, row, field, reason)."""

    rows_read: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def skip(self, reason: str, n: int = 1, example: dict[str, Any] | None = None) -> None:
        if n:
            self.skipped[reason] += n
            if example is not None and len(self.examples) < EXAMPLES:
                self.examples.append(example)

    def as_dict(self) -> dict[str, Any]:
        return {"rows_read": self.rows_read, "skipped": dict(self.skipped), "examples": self.examples}


def _columns(spec: TaskSpec, part: str, given: dict[str, str]) -> dict[str, str]:
    roles = ROLES[part if part in ("queries", "corpus", "qrels") else spec.type]
    return {role: given.get(role, default) for role, default in roles.items()}


def columns_of(spec: TaskSpec) -> dict[str, dict[str, str]]:
    """{part: {role: source column}} for every part of a task."""
    return {part: _columns(spec, part, src.columns) for part, src in spec.sources().items()}


def read_records(spec: TaskSpec, part: str, sandbox: Sandbox, report: DataReport) -> pa.Table:
    """A task part read through the datakit adapter its type maps to; returns one record table."""
    from datakit.reading import Quarantined, Records, Tally, source_events
    from datakit.recipe import SourceConfig

    src = spec.sources()[part]
    cols = _columns(spec, part, src.columns)
    adapter, options = {"sts": ("sts", {"both_orders": False}), "classification": ("classification", {}),
                        "clustering": ("clustering", {}), "reranking": ("retrieval", {}),
                        "pair_classification": ("sts", {"both_orders": False})}[spec.type]
    if spec.type == "pair_classification":
        cols["score"] = cols.pop("label")
    if spec.type == "sts" and {"min_score", "max_score"} <= set(spec.settings):  # the declared scale
        options = {**options, "score_range": [spec.settings["min_score"], spec.settings["max_score"]]}
    if spec.type == "reranking" and "negatives" not in src.columns:
        cols.pop("negatives")  # optional in the retrieval adapter
    fields = src.model_dump(exclude={"columns"}, exclude_unset=True)
    config = SourceConfig(name=spec.name, adapter=adapter, options=options, columns=cols,
                          **{k: v for k, v in fields.items()
                             if k in ("path", "hf", "sql", "format", "csv", "where", "limit")})
    kind = {"sts": "pair", "pair_classification": "pair", "reranking": "retrieval"}.get(spec.type, "classification")
    tables, tally = [], Tally()
    for event in source_events(config, sandbox, strict=False, batch_rows=50_000):
        item = tally.take(spec.name, event)
        if isinstance(item, Quarantined):
            for q in item.table.to_pylist():
                report.skip(q["reason"], 1, {k: q[k] for k in ("file", "row", "field", "reason", "detail")})
        elif isinstance(item, Records) and item.kind == kind:
            tables.append(item.table)
    report.rows_read += tally.rows_read[spec.name]
    from datakit.records import schema

    return pa.concat_tables(tables) if tables else schema(kind).empty_table()


def read_rows(spec: TaskSpec, part: str, sandbox: Sandbox, report: DataReport) -> dict[str, list]:
    """A retrieval part (queries, corpus, qrels) as columns of Python values, bad rows skipped and counted."""
    from datakit.adapters import Problems, extract
    from datakit.sources import ColumnSpec, SourceFields, read_source

    src = spec.sources()[part]
    cols = _columns(spec, part, src.columns)
    kinds = {"id": "key", "query_id": "key", "doc_id": "key", "text": "text", "title": "text", "score": "score"}
    config = SourceFields(**src.model_dump(include={"path", "hf", "sql", "format", "csv", "where", "limit"},
                                           exclude_unset=True))
    need = ColumnSpec(names=list(cols.values()), optional={cols["title"]} if "title" in cols else set(),
                      scalar={c for r, c in cols.items() if kinds[r] in ("key", "score")})
    out: dict[str, list] = {role: [] for role in cols}
    for chunk in read_source(config, sandbox, need):
        report.rows_read += chunk.table.num_rows + len(chunk.quarantine)
        for q in chunk.quarantine:
            report.skip(q["reason"], 1, {k: q[k] for k in ("file", "row", "field", "reason", "detail")})
        problems = Problems(chunk.table.num_rows)
        values = {}
        for role, col in cols.items():
            arr = extract(chunk.table.column(col), kinds[role], col, problems)
            if role == "title":
                values[role] = pc.fill_null(arr, "")
                continue
            problems.add_mask(pc.is_null(arr), col, "missing_field", f"field {col!r} is missing or null")
            if kinds[role] in ("text", "key"):
                problems.add_mask(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(pc.fill_null(arr, ""))), 0),
                                  col, "empty_text", f"field {col!r} is empty")
            values[role] = arr
        good = problems.good()
        rows = chunk.rows.to_pylist()
        for i, (f, r, d) in sorted(problems.entries.items()):
            report.skip(r, 1, {"file": chunk.file, "row": rows[i], "field": f, "reason": r, "detail": d})
        for role, arr in values.items():
            out[role] += arr.take(good).to_pylist()
    return out


def fingerprint(spec: TaskSpec, sandbox: Sandbox) -> str:
    """A revision for a local task's data: its spec plus each input file's size and mtime."""
    from datakit.sources import resolve_files

    h = hashlib.sha256(spec.model_dump_json().encode())
    for src in spec.sources().values():
        if src.path is not None:
            try:
                for f in resolve_files(src.path, sandbox):
                    st = f.stat()
                    h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
            except ValueError:
                pass  # reported when the data is read
    return h.hexdigest()[:16]


# ------------------------------------------------------------------ datasets in mteb's layout
def _sts(spec: TaskSpec, sandbox: Sandbox, report: DataReport) -> Any:
    from datasets import Dataset, DatasetDict

    t = read_records(spec, "data", sandbox, report)
    if spec.type == "sts":
        return DatasetDict({spec.split: Dataset.from_dict({"sentence1": t.column("text_a").to_pylist(),
                                                           "sentence2": t.column("text_b").to_pylist(),
                                                           "score": t.column("score").to_pylist()})})
    scores = t.column("score").to_pylist()
    keep = [i for i, s in enumerate(scores) if s in (0.0, 1.0)]
    bad = [i for i, s in enumerate(scores) if s not in (0.0, 1.0)]
    if bad:
        row = t.column("lineage")[bad[0]]["row"].as_py()
        report.skip("bad_label", len(bad), {"file": t.column("lineage")[bad[0]]["file"].as_py(), "row": row,
                                            "field": "label", "reason": "bad_label",
                                            "detail": f"pair classification labels are 0 or 1, got {scores[bad[0]]}"})
    t = t.take(pa.array(keep, pa.int64()))
    return DatasetDict({spec.split: Dataset.from_dict({"sentence1": t.column("text_a").to_pylist(),
                                                       "sentence2": t.column("text_b").to_pylist(),
                                                       "labels": [int(s) for s in t.column("score").to_pylist()]})})


def _classification(spec: TaskSpec, sandbox: Sandbox, report: DataReport, train_split: str) -> Any:
    from datasets import Dataset, DatasetDict

    out = {}
    for part, split in (("train", train_split), ("test", spec.split)):
        t = read_records(spec, part, sandbox, report)
        out[split] = Dataset.from_dict({"text": t.column("text").to_pylist(), "label": t.column("label").to_pylist()})
    return DatasetDict(out)


def _clustering(spec: TaskSpec, sandbox: Sandbox, report: DataReport) -> Any:
    from datasets import Dataset, DatasetDict

    t = read_records(spec, "data", sandbox, report)
    return DatasetDict({spec.split: Dataset.from_dict({"sentences": t.column("text").to_pylist(),
                                                       "labels": t.column("label").to_pylist()})})


def _retrieval(spec: TaskSpec, sandbox: Sandbox, report: DataReport) -> dict[str, Any]:
    from datasets import Dataset

    queries, corpus, qrels = (read_rows(spec, part, sandbox, report) for part in ("queries", "corpus", "qrels"))
    qtext = _unique(queries["id"], queries["text"], report, "query")
    docs = _unique(corpus["id"], list(zip(corpus["title"], corpus["text"])), report, "document")
    relevant: dict[str, dict[str, int]] = {}
    for qid, did, score in zip(qrels["query_id"], qrels["doc_id"], qrels["score"]):
        if qid not in qtext:
            report.skip("qrels_missing_query", 1, None)
        elif did not in docs:
            report.skip("qrels_missing_doc", 1, None)
        else:
            relevant.setdefault(qid, {})[did] = int(score)
    judged = [q for q in qtext if q in relevant]
    report.skip("query_without_qrels", len(qtext) - len(judged))
    return {"queries": Dataset.from_dict({"id": judged, "text": [qtext[q] for q in judged]}),
            "corpus": Dataset.from_dict({"id": list(docs), "title": [d[0] for d in docs.values()],
                                         "text": [d[1] for d in docs.values()]}),
            "relevant_docs": relevant, "top_ranked": None}


def _unique(ids: list[str], values: list, report: DataReport, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, v in zip(ids, values):
        if i in out:
            report.skip(f"duplicate_{what}_id")
        else:
            out[i] = v
    return out


def _reranking(spec: TaskSpec, sandbox: Sandbox, report: DataReport) -> dict[str, Any]:
    """Rows of (query, positives, candidates) -> queries, a corpus of the distinct candidate texts, qrels
    (positives 1, the rest 0) and each query's candidate list as mteb's `top_ranked`."""
    from datasets import Dataset

    t = read_records(spec, "data", sandbox, report)
    rows = pc.struct_field(t.column("lineage"), "row").to_pylist()
    doc_ids: dict[str, str] = {}
    queries: dict[str, str] = {}
    relevant: dict[str, dict[str, int]] = {}
    ranked: dict[str, list[str]] = {}
    for row, query, pos, negs in zip(rows, t.column("query").to_pylist(), t.column("positive").to_pylist(),
                                     t.column("negatives").to_pylist()):
        qid = f"q{row}"
        queries[qid] = query
        rels, candidates = relevant.setdefault(qid, {}), ranked.setdefault(qid, [])
        for text, rel in [(pos, 1)] + [(n, 0) for n in negs or []]:
            did = doc_ids.setdefault(text, f"d{len(doc_ids)}")
            if rel or did not in rels:  # a text that is both a positive and a candidate stays a positive
                rels[did] = rel
            if did not in candidates:
                candidates.append(did)
    return {"queries": Dataset.from_dict({"id": list(queries), "text": list(queries.values())}),
            "corpus": Dataset.from_dict({"id": list(doc_ids.values()), "text": list(doc_ids)}),
            "relevant_docs": relevant, "top_ranked": ranked}


# ------------------------------------------------------------------ mteb task classes
def _metadata(spec: TaskSpec, revision: str, base: Any | None) -> Any:
    from mteb.abstasks.task_metadata import TaskMetadata

    update = {"name": spec.name, "dataset": {"path": f"local/{spec.name}", "revision": revision},
              "eval_splits": [spec.split], "eval_langs": [spec.language], "superseded_by": None,
              "main_score": spec.main_score or (base.main_score if base is not None else MAIN_SCORES[spec.type]),
              "prompt": spec.instruction or (base.prompt if base is not None else None)}
    if base is not None:
        return base.model_copy(update=update)
    return TaskMetadata(description=f"local {spec.type} task from an embedkit task file", reference=None,
                        type=_MTEB_TYPE[spec.type], category=_CATEGORY.get(spec.type, "t2t"), modalities=["text"],
                        date=None, domains=None, task_subtypes=None, license=None, annotations_creators=None,
                        dialect=None, sample_creation=None, bibtex_citation=None, **update)


def _base_class(spec: TaskSpec) -> tuple[type, Any | None]:
    """The mteb class a local task runs as: the named mteb task's own class (its settings), or the abstract
    class of its type."""
    from mteb.abstasks.classification import AbsTaskClassification
    from mteb.abstasks.clustering import AbsTaskClustering
    from mteb.abstasks.pair_classification import AbsTaskPairClassification
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.sts import AbsTaskSTS

    abstract = {"sts": AbsTaskSTS, "pair_classification": AbsTaskPairClassification,
                "classification": AbsTaskClassification, "clustering": AbsTaskClustering,
                "retrieval": AbsTaskRetrieval, "reranking": AbsTaskRetrieval}[spec.type]
    if not spec.mteb_task:
        return abstract, None
    import mteb

    try:
        cls = type(mteb.get_task(spec.mteb_task))
    except KeyError:
        raise ValueError(f"task {spec.name}: mteb has no task {spec.mteb_task!r}") from None
    if not issubclass(cls, abstract):
        raise ValueError(f"task {spec.name}: mteb task {spec.mteb_task!r} is a {cls.metadata.type} task, "
                         f"not {spec.type}")
    return cls, cls.metadata


def make_task(spec: TaskSpec, sandbox: Sandbox) -> Any:
    """An mteb task object for a task-file entry; its data is read on first use (`load_data`)."""
    cls, base_meta = _base_class(spec)
    settings = dict(spec.settings)
    if spec.type == "clustering" and not spec.mteb_task:  # a local set is embedded whole, not 4% of it
        settings.setdefault("max_fraction_of_documents_to_embed", None)
    train_split = settings.get("train_split", getattr(cls, "train_split", "train"))
    if spec.type == "classification" and train_split == spec.split:
        train_split = f"{spec.split}_train"
        settings["train_split"] = train_split

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        report = DataReport()
        if spec.type in ("sts", "pair_classification"):
            self.dataset = _sts(spec, sandbox, report)
        elif spec.type == "classification":
            self.dataset = _classification(spec, sandbox, report, train_split)
        elif spec.type == "clustering":
            data = _clustering(spec, sandbox, report)
            if not spec.mteb_task and "max_documents_per_cluster" not in spec.settings:
                self.max_documents_per_cluster = min(16_384, len(data[spec.split]))
            self.dataset = data
        else:
            split = (_retrieval if spec.type == "retrieval" else _reranking)(spec, sandbox, report)
            self.dataset = {"default": {spec.split: split}}
        self.data_report = report
        self.data_loaded = True
        size = _size(self.dataset, spec)
        if size == 0:
            reasons = ", ".join(f"{r} {n}" for r, n in report.skipped.most_common(3)) or "no rows"
            raise ValueError(f"task {spec.name}: no usable rows ({report.rows_read} read; skipped: {reasons})")

    attrs = {"metadata": _metadata(spec, fingerprint(spec, sandbox), base_meta), "load_data": load_data,
             "data_report": None, "task_spec": spec, **settings}
    if spec.type in ("retrieval", "reranking"):
        from mteb.abstasks.retrieval import AbsTaskRetrieval

        if cls.task_specific_scores is AbsTaskRetrieval.task_specific_scores:
            attrs["task_specific_scores"] = exact_retrieval_scores
    return type(f"Local{cls.__name__}", (cls,), attrs)()


_PYTREC = {"ndcg_at": "ndcg_cut_", "map_at": "map_cut_", "recall_at": "recall_", "precision_at": "P_",
           "hit_rate_at": "success_"}


def exact_retrieval_scores(self: Any, scores: dict[str, dict[str, float]], qrels: Any, results: Any,
                           hf_split: str, hf_subset: str) -> dict[str, float]:
    """pytrec_eval's per-query values averaged at full precision (mteb rounds these means to 5 decimals;
    `round(ours, 5)` is mteb's number). They replace mteb's rounded ones in the results."""
    n = max(len(scores), 1)
    return {f"{ours}_{k}": sum(s[f"{theirs}{k}"] for s in scores.values()) / n
            for k in self.k_values for ours, theirs in _PYTREC.items()}


def _size(dataset: Any, spec: TaskSpec) -> int:
    if spec.type in ("retrieval", "reranking"):
        split = dataset["default"][spec.split]
        return min(len(split["queries"]), len(split["corpus"]))
    return min(len(d) for d in dataset.values())
