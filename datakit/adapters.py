"""Adapters: heterogeneous source rows -> canonical records.

Each adapter names its roles (the record fields it fills) and their default source
columns; the recipe's `columns:` maps roles to other column names. Rows that cannot
become records (missing or empty fields, wrong types, unknown labels) are returned as
quarantine entries with the field and the reason, never dropped silently.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from datakit import records
from datakit.sources import Chunk, ColumnSpec, bad_row, row_range

RoleType = Literal["text", "score", "label", "key", "text_list", "label_list", "messages"]


@dataclass
class AdapterOutput:
    tables: dict[str, list[pa.Table]] = field(default_factory=dict)  # kind -> record tables
    quarantine: list[dict[str, Any]] = field(default_factory=list)

    def add(self, kind: str, table: pa.Table) -> None:
        if table.num_rows:
            self.tables.setdefault(kind, []).append(table)


@dataclass
class RecordSet:
    """Records of one kind built from chunk rows `pos` (positions in the chunk)."""

    kind: str
    columns: dict[str, pa.Array]
    pos: pa.Array
    suffix: str | pa.Array = ""  # id suffix, e.g. "ab"/"ba" for the two orders of a pair
    detail: str | list[str] = ""  # the lineage event's detail: one for all records, or one per record


class Problems:
    """The first problem found for each row of a chunk: field, reason, detail."""

    def __init__(self, n: int):
        self.entries: dict[int, tuple[str, str, str]] = {}
        self.n = n

    def add(self, positions: list[int], field_: str, reason: str, detail: str) -> None:
        for i in positions:
            self.entries.setdefault(i, (field_, reason, detail))

    def add_mask(self, mask: pa.Array, field_: str, reason: str, detail: str) -> None:
        self.add(pc.indices_nonzero(pc.fill_null(mask, False)).to_pylist(), field_, reason, detail)

    def good(self) -> pa.Array:
        """Positions of rows without problems."""
        keep = np.ones(self.n, dtype=bool)
        keep[list(self.entries)] = False
        return pa.array(np.nonzero(keep)[0], pa.int64())


class AdapterSource(Protocol):
    """What an adapter reads of a recipe's source entry (`datakit.recipe.SourceConfig` is one)."""

    name: str  # becomes the records' dataset
    adapter: str
    columns: dict[str, str]
    options: dict[str, Any]
    instruction: str


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PairOptions(NoOptions):
    both_orders: bool = True


class Adapter:
    name: ClassVar[str]
    roles: ClassVar[dict[str, RoleType]]
    defaults: ClassVar[dict[str, str]] = {}
    optional: ClassVar[frozenset[str]] = frozenset()
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, src: AdapterSource):
        self.src = src
        self.dataset = src.name
        self.options: Any = self.Options.model_validate(src.options)
        self.colmap = {r: src.columns.get(r, self.defaults.get(r, r)) for r in self.active_roles()}

    def active_roles(self) -> list[str]:
        return list(self.roles)

    def columns(self) -> ColumnSpec:
        """Source columns to read, which of them may be absent, which hold scalars (scores, labels)."""
        return ColumnSpec(
            names=list(dict.fromkeys(self.colmap.values())),
            optional={self.colmap[r] for r in self.optional if r in self.colmap},
            scalar={c for r, c in self.colmap.items() if self.roles[r] in ("score", "label", "key")},
        )

    # -- subclass hook
    def build(self, cols: dict[str, pa.Array], n: int) -> list[RecordSet]:
        raise NotImplementedError

    def flush(self) -> AdapterOutput:
        """Records held back between chunks (only stateful adapters have any)."""
        return AdapterOutput()

    def after_chunk(self, out: AdapterOutput) -> None:
        """Hook run after each chunk (stateful adapters emit held-back records here)."""

    def reject(self, positions: list[int], role: str, reason: str, detail: str) -> None:
        """Quarantine rows found bad inside `build` (positions as passed to `build`)."""
        self._problems.add([int(self._good[i].as_py()) for i in positions], self.colmap.get(role, role), reason, detail)

    # -- driver
    def adapt(self, chunk: Chunk) -> AdapterOutput:
        out = AdapterOutput()
        table = chunk.table
        problems = Problems(table.num_rows)
        cols = {role: extract(table.column(col), self.roles[role], col, problems) for role, col in self.colmap.items()}
        for role, arr in cols.items():
            if role not in self.optional:
                problems.add_mask(pc.is_null(arr), self.colmap[role], "missing_field",
                                  f"field {self.colmap[role]!r} is missing or null")
        good = problems.good()
        self._chunk, self._good, self._problems = chunk, good, problems
        if len(good):
            kept = {role: arr.take(good) for role, arr in cols.items()}
            for rs in self.build(kept, len(good)):
                rs.pos = good.take(rs.pos)
                self._emit(rs, chunk, problems, out)
        self.after_chunk(out)
        out.quarantine += self._quarantine(chunk, problems)
        return out

    def _emit(self, rs: RecordSet, chunk: Chunk, problems: Problems, out: AdapterOutput) -> None:
        n = len(rs.pos)
        rows = chunk.rows.take(rs.pos)
        ids = pc.binary_join_element_wise(pa.array([self.dataset] * n, pa.string()), rows.cast(pa.string()), ":")
        if isinstance(rs.suffix, pa.Array):  # per-record suffix; null = none
            ids = pc.if_else(pc.is_null(rs.suffix), ids, pc.binary_join_element_wise(ids, rs.suffix, ":"))
        elif rs.suffix:
            ids = pc.binary_join_element_wise(ids, pa.array([rs.suffix] * n, pa.string()), ":")
        data = {
            "id": ids,
            "dataset": pa.array([self.dataset] * n, pa.string()),
            "instruction": pa.array([self.src.instruction] * n, pa.string()),
            **rs.columns,
            "lineage": records.lineage_array(self.dataset, chunk.file, rows, f"adapter:{self.name}", rs.detail),
        }
        if rs.kind == "retrieval":
            data.setdefault("negatives", pa.array([[]] * n, pa.list_(pa.string())))
            data.setdefault("negative_origins", _origins(data["negatives"], "given"))
        good, rejected = records.validate(rs.kind, pa.table(data))
        for i, f, r in zip(rejected.indices.to_pylist(), rejected.fields, rejected.reasons):
            src_field = self.colmap.get(f, f)
            problems.add([rs.pos[i].as_py()], src_field, r, f"field {src_field!r}: {r.replace('_', ' ')}")
        out.add(rs.kind, good)

    def _quarantine(self, chunk: Chunk, problems: Problems) -> list[dict[str, Any]]:
        rows = chunk.rows.to_pylist() if problems.entries else []
        return [bad_row(chunk.file, rows[i], f, r, d, chunk.table.slice(i, 1).to_pylist()[0])
                for i, (f, r, d) in sorted(problems.entries.items())]


# ------------------------------------------------------------------ typed extraction
def extract(col: pa.ChunkedArray, kind: RoleType, name: str, problems: Problems) -> pa.Array:
    """Coerce a source column to the role's Arrow type; rows of the wrong type become nulls + problems."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    t = arr.type
    if pa.types.is_null(t):
        return pa.nulls(len(arr), _ARROW_TYPE[kind])
    if kind == "text":
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return arr.cast(pa.string())
        return _wrong(arr, name, "text", problems, pa.string())
    if kind == "label":
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return _class_labels(pc.utf8_trim_whitespace(arr.cast(pa.string())), name, problems)
        if pa.types.is_integer(t) or pa.types.is_boolean(t):
            return arr.cast(pa.string())
        if pa.types.is_floating(t):
            return _class_labels(arr.cast(pa.string()), name, problems)
        return _wrong(arr, name, "a label (string or integer)", problems, pa.string())
    if kind == "key":  # an identifier: text as it is, integers (and whole floats) as their digits
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return pc.utf8_trim_whitespace(arr.cast(pa.string()))
        if pa.types.is_integer(t):
            return arr.cast(pa.string())
        if pa.types.is_floating(t):
            return pa.array([None if v is None else (str(int(v)) if float(v).is_integer() else repr(v))
                             for v in arr.to_pylist()], pa.string())
        return _wrong(arr, name, "an identifier (string or integer)", problems, pa.string())
    if kind == "score":
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
            return arr.cast(pa.float64())
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return _parse_scores(arr, name, problems)
        return _wrong(arr, name, "a number", problems, pa.float64())
    if kind == "text_list":
        return _text_list(arr, name, problems)
    if kind == "label_list":  # a list of labels, or one label
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            if pa.types.is_integer(t.value_type) or pa.types.is_boolean(t.value_type):
                return arr.cast(pa.list_(pa.string()))
            return _text_list(arr, name, problems)
        single = extract(arr, "label", name, problems)
        return pa.ListArray.from_arrays(pa.array(np.arange(len(single) + 1, dtype=np.int32)), single,
                                        mask=pc.is_null(single))
    if kind == "messages":
        return _messages(arr, name, problems)
    raise AssertionError(kind)


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _class_labels(arr: pa.Array, name: str, problems: Problems) -> pa.Array:
    """One spelling per class, whatever the file type: 1, "1", 1.0 and "1.0" are the class "1"; a number that is
    not whole (2.5) is not a class: `bad_label`. Text labels stay as they are."""
    values = arr.to_pylist()
    bad = np.zeros(len(values), bool)
    out: list[str | None] = []
    for i, v in enumerate(values):
        if v is not None and _NUMBER.match(v):
            f = float(v)
            if math.isfinite(f) and f.is_integer():
                v = str(int(f))
            else:
                bad[i] = True
                v = None
        out.append(v)
    if bad.any():
        problems.add_mask(pa.array(bad), name, "bad_label", f"field {name!r}: a numeric label that is not a whole "
                          "number; class labels are text or integers (1, \"1\" and 1.0 are one class)")
    return pa.array(out, pa.string())


_ARROW_TYPE = {"text": pa.string(), "label": pa.string(), "key": pa.string(), "score": pa.float64(),
               "text_list": pa.list_(pa.string()), "label_list": pa.list_(pa.string()), "messages": pa.struct([("query", pa.string()), ("answer", pa.string())])}


def _wrong(arr: pa.Array, name: str, expected: str, problems: Problems, out_type: pa.DataType) -> pa.Array:
    problems.add_mask(pc.is_valid(arr), name, "wrong_type", f"field {name!r}: expected {expected}, got {arr.type}")
    return pa.nulls(len(arr), out_type)


def _parse_scores(arr: pa.Array, name: str, problems: Problems) -> pa.Array:
    try:
        return pc.cast(pc.utf8_trim_whitespace(arr), pa.float64())
    except pa.ArrowInvalid:
        pass
    out: list[float | None] = []
    bad: list[int] = []
    for i, v in enumerate(arr.to_pylist()):
        try:
            out.append(None if v is None else float(v))
        except ValueError:
            out.append(None)
            bad.append(i)
    problems.add(bad, name, "bad_score", f"field {name!r}: not a number")
    return pa.array(out, pa.float64())


def _text_list(arr: pa.Array, name: str, problems: Problems) -> pa.Array:
    """A list of strings; a plain string becomes a one-item list. A string that is a JSON array is decoded (a
    CSV cell holding a list); one that only starts with "[" ("[1] Smith et al.", "[Ticker] ...") is a text."""
    t = arr.type
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and (
        pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type) or pa.types.is_null(t.value_type)
    ):
        return arr.cast(pa.list_(pa.string()))
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        out: list[list[str] | None] = []
        for i, v in enumerate(arr.to_pylist()):
            if v is None:
                out.append(None)
            elif (items := _json_array(v)) is None:
                out.append([v])
            elif all(isinstance(x, str) for x in items):
                out.append(items)
            else:
                out.append(None)
                problems.add([i], name, "wrong_type", f"field {name!r}: a JSON array, not of strings")
        return pa.array(out, pa.list_(pa.string()))
    return _wrong(arr, name, "a list of strings", problems, pa.list_(pa.string()))


def _json_array(text: str) -> list | None:
    """`text` parsed, where it is a JSON array; None for any other text."""
    if not text.lstrip().startswith("["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, list) else None


def _messages(arr: pa.Array, name: str, problems: Problems) -> pa.Array:
    """Chat turns ([{role, content}] or ShareGPT [{from, value}]) -> first user turn and the reply to it."""
    out: list[dict[str, str] | None] = []
    for i, turns in enumerate(arr.to_pylist()):
        if turns is None:
            out.append(None)
            continue
        if isinstance(turns, str):
            try:
                turns = json.loads(turns)
            except ValueError:
                turns = None
        query = answer = None
        if isinstance(turns, list):
            for t in turns:
                if not isinstance(t, dict):
                    continue
                who = str(t.get("role") or t.get("from") or "").lower()
                text = t.get("content") if t.get("content") is not None else t.get("value")
                if query is None and who in ("user", "human"):
                    query = text
                elif query is not None and who in ("assistant", "gpt", "bot", "model"):
                    answer = text
                    break
        if not isinstance(query, str) or not isinstance(answer, str):
            problems.add([i], name, "missing_field", f"field {name!r}: no user turn followed by an assistant turn")
            out.append(None)
        else:
            out.append({"query": query, "answer": answer})
    return pa.array(out, _ARROW_TYPE["messages"])


def _origins(negatives: pa.Array, origin: str) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum(_lengths(negatives))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array([origin] * int(offsets[-1]), pa.string()))


def _lengths(values: pa.Array) -> np.ndarray:
    return pc.fill_null(pc.list_value_length(values), 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _explode(values: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(flattened items, parent position, index within its list) of a list column."""
    lengths = _lengths(values)
    starts = np.cumsum(lengths) - lengths
    parent = np.repeat(np.arange(len(lengths)), lengths)
    within = np.arange(len(parent)) - starts[parent]
    return pc.list_flatten(values), pa.array(parent, pa.int64()), pa.array(within, pa.int64())


def _pairs(cols_a: pa.Array, cols_b: pa.Array, score: pa.Array, label: pa.Array, n: int, both: bool) -> list[RecordSet]:
    pos = row_range(0, n)
    sets = [RecordSet("pair", {"text_a": cols_a, "text_b": cols_b, "score": score, "label": label}, pos,
                      "ab" if both else "", "order=ab" if both else "")]
    if both:
        sets.append(RecordSet("pair", {"text_a": cols_b, "text_b": cols_a, "score": score, "label": label}, pos,
                              "ba", "order=ba"))
    return sets


# ------------------------------------------------------------------ adapters
class TitleBody(Adapter):
    """title -> query, body -> positive (news, papers, web pages)."""

    name = "title_body"
    roles = {"query": "text", "positive": "text"}
    defaults = {"query": "title", "positive": "body"}

    def build(self, cols, n):
        return [RecordSet("retrieval", {"query": cols["query"], "positive": cols["positive"]}, row_range(0, n))]


class QA(Adapter):
    """user turn -> query, answer -> positive; flat columns or a chat `messages` column."""

    name = "qa"
    roles = {"query": "text", "positive": "text", "messages": "messages"}
    defaults = {"query": "question", "positive": "answer", "messages": "messages"}

    def active_roles(self) -> list[str]:
        return ["messages"] if "messages" in self.src.columns else ["query", "positive"]

    def build(self, cols, n):
        if "messages" in cols:
            m = cols["messages"]
            query, positive = pc.struct_field(m, "query"), pc.struct_field(m, "answer")
        else:
            query, positive = cols["query"], cols["positive"]
        return [RecordSet("retrieval", {"query": query, "positive": positive}, row_range(0, n))]


class ReadingOptions(NoOptions):
    template: str = "{context}\n\nAnswer the question using the passage above.\n{question}"


class ReadingComprehension(Adapter):
    """query = context + an instruction + question (the `template`), positive = answer."""

    name = "reading_comprehension"
    roles = {"context": "text", "question": "text", "positive": "text"}
    defaults = {"positive": "answer"}
    Options = ReadingOptions

    def build(self, cols, n):
        ctx, q = cols["context"].to_pylist(), cols["question"].to_pylist()
        tpl = self.options.template
        query = pa.array([tpl.format(context=c, question=x) for c, x in zip(ctx, q)], pa.string())
        return [RecordSet("retrieval", {"query": query, "positive": cols["positive"]}, row_range(0, n))]


class Retrieval(Adapter):
    """query, positive (a string or a list: one record per positive), optional given negatives."""

    name = "retrieval"
    roles = {"query": "text", "positive": "text_list", "negatives": "text_list"}
    optional = frozenset({"negatives"})

    def build(self, cols, n):
        flat, parent, within = _explode(cols["positive"])
        negs = pc.if_else(pc.is_null(cols["negatives"]), pa.array([[]] * n, pa.list_(pa.string())), cols["negatives"])
        negs = negs.take(parent)
        multi = pc.greater(pc.list_value_length(cols["positive"]).take(parent), 1)
        suffix = pc.if_else(multi, pc.binary_join_element_wise("p", within.cast(pa.string()), ""),
                            pa.scalar(None, pa.string()))
        return [RecordSet("retrieval", {"query": cols["query"].take(parent), "positive": flat, "negatives": negs,
                                        "negative_origins": _origins(negs, "given")}, parent, suffix)]


class NLIOptions(PairOptions):
    label_map: dict[str, float] = {"entailment": 2.0, "neutral": 1.0, "contradiction": 0.0}
    triplets: bool = False  # also emit retrieval triplets: premise -> entailed hypothesis, contradiction as negative


class NLI(Adapter):
    """entailment / neutral / contradiction -> ordinal scores (2/1/0); optionally retrieval triplets.

    Triplets (premise -> entailed hypothesis, contradictions as given negatives) group rows
    by premise; the rows of one premise must be contiguous, as in SNLI and MNLI.
    """

    name = "nli"
    roles = {"text_a": "text", "text_b": "text", "label": "label"}
    defaults = {"text_a": "premise", "text_b": "hypothesis"}
    Options = NLIOptions

    def __init__(self, src: AdapterSource):
        super().__init__(src)
        self._groups: list[dict[str, Any]] = []  # premise groups; the last may continue in the next chunk

    def build(self, cols, n):
        mapping = {k.strip().lower(): v for k, v in self.options.label_map.items()}
        labels = cols["label"].to_pylist()
        known = [i for i, lab in enumerate(labels) if lab.strip().lower() in mapping]
        for i in sorted(set(range(n)) - set(known)):
            self.reject([i], "label", "bad_label", f"label {labels[i]!r} is not in label_map ({', '.join(mapping)})")
        pos = pa.array(known, pa.int64())
        score = pa.array([mapping[labels[i].strip().lower()] for i in known], pa.float64())
        a, b, lab = cols["text_a"].take(pos), cols["text_b"].take(pos), cols["label"].take(pos)
        sets = _pairs(a, b, score, lab, len(known), self.options.both_orders)
        for s in sets:
            s.pos = pos.take(s.pos)
        if self.options.triplets:
            top, bottom = max(mapping.values()), min(mapping.values())
            rows = self._chunk.rows.take(self._good.take(pos)).to_pylist()
            for p, h, sc, row in zip(a.to_pylist(), b.to_pylist(), score.to_pylist(), rows):
                if not self._groups or self._groups[-1]["premise"] != p:
                    self._groups.append({"premise": p, "pos": [], "neg": [], "file": self._chunk.file})
                g = self._groups[-1]
                if sc == top and h.strip():
                    g["pos"].append((h, row))
                elif sc == bottom and h.strip():
                    g["neg"].append(h)
        return sets

    def after_chunk(self, out: AdapterOutput) -> None:
        if len(self._groups) > 1:
            ready, self._groups = self._groups[:-1], self._groups[-1:]
            self._emit_triplets(ready, out)

    def flush(self) -> AdapterOutput:
        out = AdapterOutput()
        ready, self._groups = self._groups, []
        self._emit_triplets(ready, out)
        return out

    def _emit_triplets(self, groups: list[dict[str, Any]], out: AdapterOutput) -> None:
        found = [(g, h, row) for g in groups for h, row in g["pos"]]
        if not found:
            return
        n = len(found)
        negs = pa.array([list(g["neg"]) for g, _, _ in found], pa.list_(pa.string()))
        rows = [row for _, _, row in found]
        table = pa.table({
            "id": [f"{self.dataset}:{row}:t" for row in rows],
            "dataset": [self.dataset] * n,
            "instruction": [self.src.instruction] * n,
            "query": [g["premise"] for g, _, _ in found],
            "positive": [h for _, h, _ in found],
            "negatives": negs,
            "negative_origins": _origins(negs, "given"),
            "lineage": records.lineage_array(self.dataset, [g["file"] for g, _, _ in found], rows,
                                             "adapter:nli", "triplet"),
        })
        out.add("retrieval", records.validate("retrieval", table)[0])


class STSOptions(PairOptions):
    score_range: tuple[float, float] | None = Field(
        None, description="[low, high] of the scale (e.g. [0, 5]): scores outside are quarantined as bad_score")

    @field_validator("score_range")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"give [low, high] with low < high, got {list(value)}")
        return value


def score_problems(scores: list[float], score_range: tuple[float, float] | None) -> dict[int, str]:
    """{position: why} for scores that are not finite, or outside `score_range`."""
    bad = {}
    for i, v in enumerate(scores):
        if not math.isfinite(v):
            bad[i] = f"score {v} is not a finite number"
        elif score_range is not None and not score_range[0] <= v <= score_range[1]:
            bad[i] = f"score {v:g} is outside score_range [{score_range[0]:g}, {score_range[1]:g}]"
    return bad


class STS(Adapter):
    """sentence pair + numeric score (0-5, 0/1 labels, ...) -> pair record; higher = closer."""

    name = "sts"
    roles = {"text_a": "text", "text_b": "text", "score": "score"}
    defaults = {"text_a": "sentence1", "text_b": "sentence2"}
    Options = STSOptions

    def build(self, cols, n):
        bad = score_problems(cols["score"].to_pylist(), self.options.score_range)
        for i, why in sorted(bad.items()):
            self.reject([i], "score", "bad_score", why)
        pos = pa.array([i for i in range(n) if i not in bad], pa.int64())
        a, b, score = cols["text_a"].take(pos), cols["text_b"].take(pos), cols["score"].take(pos)
        sets = _pairs(a, b, score, pc.cast(score, pa.string()), len(pos), self.options.both_orders)
        for s in sets:
            s.pos = pos.take(s.pos)
        return sets


class ClassificationOptions(NoOptions):
    label_names: dict[str, str] = {}  # raw label -> name (e.g. "0" -> "sadness")


class Classification(Adapter):
    """text + label -> classification record (label ids can be renamed with `label_names`)."""

    name = "classification"
    roles = {"text": "text", "label": "label"}
    Options = ClassificationOptions

    def build(self, cols, n):
        label = cols["label"]
        if self.options.label_names:
            names = self.options.label_names
            label = pa.array([names.get(v, v) for v in label.to_pylist()], pa.string())
        return [RecordSet("classification", {"text": cols["text"], "label": label}, row_range(0, n))]


class Clustering(Classification):
    """cluster label -> classification; also MTEB's layout (a row of `sentences` with a list of `labels`)."""

    name = "clustering"
    roles = {"text": "text_list", "label": "label_list"}
    defaults = {}
    Options = ClassificationOptions

    def build(self, cols, n):
        text_len, label_len = _lengths(cols["text"]), _lengths(cols["label"])
        ok = (label_len == 1) | (label_len == text_len)
        self.reject([int(i) for i in np.nonzero(~ok)[0]], "label", "length_mismatch",
                    "the label list and the text list differ in length")
        texts, parent, within = _explode(cols["text"])
        p = parent.to_numpy()
        keep = ok[p]
        p, w = p[keep], within.to_numpy()[keep]
        texts = texts.filter(pa.array(keep))
        starts = np.cumsum(label_len) - label_len
        idx = starts[p] + np.where(label_len[p] == 1, 0, w)
        label = pc.list_flatten(cols["label"]).take(pa.array(idx, pa.int64()))
        if self.options.label_names:
            names = self.options.label_names
            label = pa.array([names.get(v, v) for v in label.to_pylist()], pa.string())
        suffix = pa.array([f"s{x}" if text_len[q] > 1 else None for q, x in zip(p, w)], pa.string())
        return [RecordSet("classification", {"text": texts, "label": label}, pa.array(p, pa.int64()), suffix)]


class ChunkOptions(NoOptions):
    by: Literal["words", "tokens", "sentences", "none"] = "words"  # none: one passage per row
    size: int = Field(180, gt=0, description="words, tokens or sentences per passage (180 words: about 234 "
                      "tokens, within MiniLM's 256)")
    overlap: int = Field(20, ge=0, description="of the same unit, shared by consecutive passages")
    min_length: int = Field(20, ge=0, description="a shorter last piece joins the one before; a shorter "
                            "document is quarantined as too_short")
    tokenizer: str = Field("embedded-minilm", description="by: tokens: whose tokens (a folder, hub id or alias)")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> "ChunkOptions":
        if self.overlap >= self.size:
            raise ValueError(f"overlap {self.overlap} must be smaller than size {self.size}")
        return self


class DocumentsOptions(NoOptions):
    chunk: ChunkOptions = ChunkOptions()


_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")
_WORD_SPAN = re.compile(r"\S+")


def _spans(text: str, opts: ChunkOptions, tokenizer: Any = None) -> list[tuple[int, int]]:
    """(start, end) character spans of a document's passages: windows of `size` units moving by size - overlap;
    a last window shorter than `min_length` units joins the one before."""
    if opts.by == "none":
        return [(0, len(text))]
    if opts.by == "words":
        units = [(m.start(), m.end()) for m in _WORD_SPAN.finditer(text)]
    elif opts.by == "sentences":
        units, start = [], 0
        for m in _SENTENCE_END.finditer(text):
            units.append((start, m.start()))
            start = m.end()
        if start < len(text) and text[start:].strip():
            units.append((start, len(text)))
    else:
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        units = [(a, b) for a, b in offsets if b > a]
    if not units:
        return []
    step = opts.size - opts.overlap
    windows = []
    for lo in range(0, len(units), step):
        hi = min(lo + opts.size, len(units))
        windows.append((lo, hi))
        if hi == len(units):
            break
    if len(windows) > 1 and windows[-1][1] - windows[-1][0] - opts.overlap < opts.min_length:
        windows[-2] = (windows[-2][0], windows[-1][1])  # a short tail joins the passage before it
        windows.pop()
    return [(units[lo][0], units[hi - 1][1]) for lo, hi in windows]


class Documents(Adapter):
    """Text-only rows (a document or a passage each: `text`, optional `id` and `title`) -> passages, chunked
    by words, tokens or sentences with overlap. Each passage keeps its document's id and its position (`doc_id`,
    `chunk`, and the lineage event `doc=<id> chunk=<i>/<n> chars=<start>-<end>`). Rows are read a batch at a time:
    a large file streams. `generate_queries` makes retrieval records from the passages."""

    name = "documents"
    roles = {"text": "text", "id": "key", "title": "text"}
    defaults = {"text": "text", "id": "id", "title": "title"}
    optional = frozenset({"id", "title"})
    Options = DocumentsOptions

    def __init__(self, src: AdapterSource):
        super().__init__(src)
        self._tokenizer = None

    def _tok(self) -> Any:
        if self._tokenizer is None and self.options.chunk.by == "tokens":
            from transformers import AutoTokenizer

            from embedkit.models import resolve_name

            self._tokenizer = AutoTokenizer.from_pretrained(resolve_name(self.options.chunk.tokenizer)[0])
        return self._tokenizer

    def build(self, cols, n):
        opts = self.options.chunk
        texts = cols["text"].to_pylist()
        ids = cols["id"].to_pylist() if "id" in cols else [None] * n
        titles = cols["title"].to_pylist() if "title" in cols else [None] * n
        rows = self._chunk.rows.take(self._good).to_pylist()
        pos, chunk_text, chunk_no, doc_ids, title_col, suffix, detail = [], [], [], [], [], [], []
        short, blank = [], []
        for i, text in enumerate(texts):
            if not text.strip():
                blank.append(i)
                continue
            spans = _spans(text, opts, self._tok())
            units = len(_WORD_SPAN.findall(text)) if opts.by == "words" else None
            if not spans or (units is not None and units < opts.min_length and opts.by != "none"):
                short.append(i)
                continue
            doc = str(ids[i]) if ids[i] is not None else f"{self.dataset}:{rows[i]}"
            for j, (a, b) in enumerate(spans):
                pos.append(i)
                chunk_text.append(text[a:b])
                chunk_no.append(j)
                doc_ids.append(doc)
                title_col.append(titles[i] or "")
                suffix.append(f"c{j}")
                detail.append(f"doc={doc} chunk={j}/{len(spans)} chars={a}-{b}")
        if blank:
            self.reject(blank, "text", "empty_text", "field 'text': empty text")
        if short:
            self.reject(short, "text", "too_short", f"a document shorter than chunk.min_length "
                        f"({opts.min_length} {opts.by})")
        if not pos:
            return []
        return [RecordSet("passage", {"text": pa.array(chunk_text, pa.string()), "title": pa.array(title_col, pa.string()),
                                      "doc_id": pa.array(doc_ids, pa.string()), "chunk": pa.array(chunk_no, pa.int32())},
                          pa.array(pos, pa.int64()), pa.array(suffix, pa.string()), detail)]


ADAPTERS: dict[str, type[Adapter]] = {
    cls.name: cls for cls in (TitleBody, QA, ReadingComprehension, Retrieval, NLI, STS, Classification, Clustering,
                              Documents)
}


def adapter_class(name: str) -> type[Adapter]:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise KeyError(f"unknown adapter {name!r}; known: {', '.join(ADAPTERS)}") from None


def make_adapter(src: AdapterSource) -> Adapter:
    return adapter_class(src.adapter)(src)
