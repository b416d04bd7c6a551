"""Eval task files: YAML whose sources use exactly the recipe's source syntax (`path` / `hf` / `sql`, `format`,
`csv:`, `columns`, `where`, `limit`), validated by pydantic with errors that name the key and its line.

```yaml
tasks:
  - name: SICK-R-local
    type: sts
    path: SICK.txt
    format: tsv
    csv: {delimiter: "\\t", quote_char: false}
    columns: {text_a: sentence_A, text_b: sentence_B, score: relatedness_score}
    where: {SemEval_set: TEST}          # SICK keeps its three splits in one file
```

Where each type takes its data:

| type | data | column roles (defaults) |
|---|---|---|
| sts | the task's source | text_a (sentence1), text_b (sentence2), score (score) |
| pair_classification | the task's source | text_a (sentence1), text_b (sentence2), label (label: 0/1) |
| classification | `train:` and `test:` (or the task's source as test) | text (text), label (label) |
| clustering | the task's source: a text and its label per row, or MTEB's rows of lists | text (text), label (label) |
| reranking | the task's source: a query, its positives and its candidates | query, positive, negatives |
| retrieval | `beir: FOLDER`, or `queries:` / `corpus:` / `qrels:` | id, text / id, text, title / query_id, doc_id, score |
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from datakit.sources import Sandbox, SourceFields, SourceLocation
from embedkit.configfile import ConfigError, Strict, format_errors, line_of, parse_yaml, read_text
from trainer.config import DEFAULT_QUERY_TEMPLATE

TaskType = Literal["sts", "retrieval", "classification", "clustering", "pair_classification", "reranking"]

# column roles per type (and per retrieval part), with their default source columns
ROLES: dict[str, dict[str, str]] = {
    "sts": {"text_a": "sentence1", "text_b": "sentence2", "score": "score"},
    "pair_classification": {"text_a": "sentence1", "text_b": "sentence2", "label": "label"},
    "classification": {"text": "text", "label": "label"},
    "clustering": {"text": "text", "label": "label"},
    "reranking": {"query": "query", "positive": "positive", "negatives": "negatives"},
    "queries": {"id": "_id", "text": "text"},
    "corpus": {"id": "_id", "text": "text", "title": "title"},
    "qrels": {"query_id": "query-id", "doc_id": "corpus-id", "score": "score"},
}
# mteb protocol settings a task may override (class attributes of mteb's abstract task classes)
SETTINGS: dict[str, set[str]] = {
    "sts": {"min_score", "max_score"},
    "pair_classification": set(),
    "classification": {"n_experiments", "samples_per_label", "train_split"},
    "clustering": {"n_clusters", "max_documents_per_cluster", "max_document_to_embed",
                   "max_fraction_of_documents_to_embed"},
    "reranking": {"k_values"},
    "retrieval": {"k_values", "ignore_identical_ids"},
}
MAIN_SCORES = {"sts": "cosine_spearman", "retrieval": "ndcg_at_10", "classification": "accuracy",
               "clustering": "v_measure", "pair_classification": "max_ap", "reranking": "map_at_1000"}
SYMMETRIC = {"sts", "classification", "clustering", "pair_classification"}  # the instruction goes on both sides


class TaskFileError(ConfigError):
    """The task file is not valid; the message names the key (and line) at fault."""


class TaskSource(SourceLocation):
    """One source of a task (classification's train/test, retrieval's queries/corpus/qrels)."""


class TaskSpec(SourceFields):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.\-]+$", description="the results file's task name")
    type: TaskType
    split: str = Field("test", pattern=r"^[A-Za-z0-9_.\-]+$")
    instruction: str = Field("", description="task instruction; queries (or both sides of symmetric tasks) get it")
    language: str = Field("eng-Latn", description="ISO 639-3 + script, as mteb writes it (cmn-Hans for Chinese)")
    mteb_task: str | None = Field(None, description="evaluate with this mteb task's class and settings, on this data")
    main_score: str | None = None
    settings: dict[str, Any] = {}
    train: TaskSource | None = None
    test: TaskSource | None = None
    beir: str | None = Field(None, description="a BEIR folder: corpus.jsonl, queries.jsonl, qrels/{split}.tsv")
    queries: TaskSource | None = None
    corpus: TaskSource | None = None
    qrels: TaskSource | None = None

    @model_validator(mode="after")
    def _data_for_type(self) -> "TaskSpec":
        own = self.locations()
        if len(own) > 1:
            raise ValueError(f"give at most one of path, hf, sql (got {', '.join(own)})")
        parts = {k: getattr(self, k) is not None for k in ("train", "test", "beir", "queries", "corpus", "qrels")}
        if self.type == "retrieval":
            three = [k for k in ("queries", "corpus", "qrels") if parts[k]]
            if self.columns:
                raise ValueError("a retrieval task's columns go on its queries:/corpus:/qrels: sources")
            if own or parts["train"] or parts["test"]:
                raise ValueError("a retrieval task takes `beir:` or `queries:`/`corpus:`/`qrels:`, not path/hf/sql")
            if parts["beir"] == bool(three) or (three and len(three) != 3):
                raise ValueError("a retrieval task needs `beir: FOLDER`, or all three of queries, corpus, qrels")
        elif self.type == "classification":
            if parts["beir"] or any(parts[k] for k in ("queries", "corpus", "qrels")):
                raise ValueError("a classification task takes `train:` and `test:` (or path/hf/sql as its test data)")
            if not parts["train"]:
                raise ValueError("a classification task needs `train:` (the logistic regression is fit on it)")
            if bool(own) == parts["test"]:
                raise ValueError("give the test data once: `test:` or path/hf/sql")
        else:
            extra = [k for k, v in parts.items() if v]
            if extra:
                raise ValueError(f"a {self.type} task reads its own path/hf/sql; {', '.join(extra)} is not used")
            if not own:
                raise ValueError(f"a {self.type} task needs its data: path, hf or sql")
        unknown = set(self.settings) - SETTINGS[self.type]
        if unknown:
            raise ValueError(f"settings: unknown for {self.type}: {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(sorted(SETTINGS[self.type])) or 'none'})")
        return self

    def sources(self) -> dict[str, SourceFields]:
        """The task's sources by part: data / train / test / queries / corpus / qrels."""
        if self.type == "retrieval":
            if self.beir is not None:
                return beir_sources(self.beir, self.split)
            return {"queries": self.queries, "corpus": self.corpus, "qrels": self.qrels}  # type: ignore[dict-item]
        if self.type == "classification":  # train/test inherit the task's columns unless they set their own
            parts = {"train": self.train, "test": self.test or self}
            return {k: v if v.columns or v is self else v.model_copy(update={"columns": self.columns})
                    for k, v in parts.items()}  # type: ignore[union-attr]
        return {"data": self}

    @property
    def main(self) -> str:
        return self.main_score or MAIN_SCORES[self.type]


def beir_sources(folder: str, split: str) -> dict[str, SourceFields]:
    """A BEIR folder as the three retrieval sources (corpus and queries may be gzipped)."""
    return {
        "queries": TaskSource(path=f"{folder}/queries.jsonl*", format="jsonl"),
        "corpus": TaskSource(path=f"{folder}/corpus.jsonl*", format="jsonl"),
        "qrels": TaskSource(path=f"{folder}/qrels/{split}.tsv", format="tsv"),
    }


class TaskFile(Strict):
    tasks: list[TaskSpec] = Field(..., min_length=1)
    allow_paths: list[str] = Field([], description="files or folders outside the task file's folder that its "
                                   "tasks may read (as a recipe's allow_paths)")
    query_template: str = Field(DEFAULT_QUERY_TEMPLATE, description="how an instruction becomes a prompt")
    batch_size: int = Field(32, gt=0)


class LoadedTaskFile:
    """A validated task file, the folder its paths are relative to, and where each key is (for errors)."""

    def __init__(self, spec: TaskFile, path: Path, root: yaml.Node | None = None):
        self.spec, self.path, self.base_dir, self.root = spec, path, path.resolve().parent, root

    @property
    def sandbox(self) -> Sandbox:
        """Where the tasks may read: the task file's folder and its allow_paths."""
        return Sandbox.of(self.base_dir, self.spec.allow_paths, owner="task file")

    @property
    def tasks(self) -> list[TaskSpec]:
        return self.spec.tasks

    def where(self, index: int, *keys: str) -> str:
        """`file:line: tasks[i].key` of a key of task `index` (the deepest key the file has)."""
        line = line_of(self.root, ("tasks", index, *keys))
        key = ".".join((f"tasks[{index}]", *keys))
        return f"{self.path}:{line}: {key}" if line else f"{self.path}: {key}"


def _column_errors(spec: TaskFile, root: yaml.Node | None, path: Path) -> list[str]:
    errors = []
    for i, task in enumerate(spec.tasks):
        checks = [((), task.type, task.columns)]
        checks += [((part,), part if part in ROLES else task.type, src.columns)
                   for part in ("train", "test", "queries", "corpus", "qrels")
                   if (src := getattr(task, part)) is not None]
        for where, kind, columns in checks:
            roles = ROLES.get(kind, {})
            for role in columns:
                if role not in roles:
                    loc = ("tasks", i) + where + ("columns", role)
                    key = ".".join(str(x) for x in loc[2:])
                    errors.append(f"{path}:{line_of(root, loc)}: tasks[{i}].{key}: a {kind} source has no role "
                                  f"{role!r} (roles: {', '.join(roles)})")
    names = [t.name for t in spec.tasks]
    for i, name in enumerate(names):
        if name in names[:i]:
            errors.append(f"{path}:{line_of(root, ('tasks', i, 'name'))}: tasks[{i}].name: two tasks are named {name!r}")
    return errors


def parse_task_file(text: str, path: Path) -> tuple[TaskFile, yaml.Node | None]:
    data, root = parse_yaml(text, path, TaskFileError)
    if not isinstance(data, dict):
        raise TaskFileError(f"{path}: a task file is a mapping with a `tasks:` list")
    try:
        spec = TaskFile.model_validate(data)
    except ValidationError as exc:
        raise TaskFileError("\n".join(format_errors(exc, root, (), path))) from None
    errors = _column_errors(spec, root, path)
    if errors:
        raise TaskFileError("\n".join(errors))
    return spec, root


def load_task_file(path: str | Path) -> LoadedTaskFile:
    path = Path(path)
    text = read_text(path, "task file", TaskFileError)
    spec, root = parse_task_file(text, path)
    return LoadedTaskFile(spec, path, root)
