"""Reading a source through its adapter: the typed events it yields, and the one tally that consumes them.

`source_events` reads a recipe's source (any reader, any adapter) and yields, in order: `Quarantined` rows,
`Lost` rows (swallowed by an unbalanced CSV quote), a `Truncated` input, `Read` counts and `Records` batches.
A build (either executor), `datakit validate` and the eval task reader all count them with `Tally.take`, so the
three agree on what a source read; a build also fails a source that was mostly quarantined
(`check_quarantine_share`).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Union

import pyarrow as pa

from datakit.adapters import make_adapter
from datakit.records import QUARANTINE_SCHEMA
from datakit.sources import Sandbox, SourceError, read_source

if TYPE_CHECKING:
    from datakit.recipe import SourceConfig


class DataError(ValueError):
    """Bad input data the build will not go on with: a bad row under --strict (naming the file, row and field),
    a source mostly quarantined, or no records at all."""


@dataclass
class Records:
    kind: str
    table: pa.Table


@dataclass
class Quarantined:
    table: pa.Table  # QUARANTINE_SCHEMA rows


@dataclass
class Read:
    rows: int  # source rows read (good and quarantined)


@dataclass
class Lost:
    rows: int  # CSV rows an unbalanced quote swallowed


@dataclass
class Truncated:
    info: dict[str, Any]  # {source, file, byte, row, error}: a compressed input that broke


SourceEvent = Union[Records, Quarantined, Read, Lost, Truncated]


@dataclass
class Tally:
    """What the sources read, per source: rows, quarantine reasons (and the first quarantined row), rows lost,
    inputs that broke."""

    rows_read: Counter = field(default_factory=Counter)
    quarantine: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    lost: Counter = field(default_factory=Counter)
    truncated: list[dict[str, Any]] = field(default_factory=list)
    example: dict[str, dict[str, Any]] = field(default_factory=dict)

    def take(self, source: str, event: SourceEvent) -> Records | Quarantined | None:
        """Count one event of `source`; return it when it carries data on (records, quarantined rows)."""
        if isinstance(event, Read):
            self.rows_read[source] += event.rows
        elif isinstance(event, Lost):
            self.lost[source] += event.rows
        elif isinstance(event, Truncated):
            self.truncated.append(event.info)
        elif isinstance(event, Quarantined):
            for reason, n in Counter(event.table.column("reason").to_pylist()).items():
                self.quarantine[source][reason] += n
            if source not in self.example:
                self.example[source] = event.table.slice(0, 1).to_pylist()[0]
            return event
        else:
            return event
        return None


def named(source: str, chunks: Iterator[Any]) -> Iterator[Any]:
    """A source's chunks; a SourceError raised while reading them names the source."""
    try:
        yield from chunks
    except SourceError as exc:
        if str(exc).startswith("source "):
            raise
        raise SourceError(f"source {source!r}: {exc}") from None


def source_events(src: SourceConfig, sandbox: Sandbox, strict: bool, batch_rows: int) -> Iterator[SourceEvent]:
    """Read one source through its adapter. The local executor consumes this in process; the Ray executor runs it
    as a Ray task per source."""
    adapter = make_adapter(src)
    for chunk in named(src.name, read_source(src, sandbox, adapter.columns(), batch_rows)):
        out = adapter.adapt(chunk)
        bad = chunk.quarantine + out.quarantine
        if bad and strict:
            q = bad[0]
            row = f"row {q['row']}" if q["row"] >= 0 else "a row"
            raise DataError(f"source {src.name!r}: {q['file']}, {row}, field {q['field'] or '-'}: "
                            f"{q['reason']}: {q['detail']}")
        if bad:
            yield Quarantined(pa.Table.from_pylist([{"dataset": src.name, **q} for q in bad], schema=QUARANTINE_SCHEMA))
        if chunk.swallowed:
            yield Lost(chunk.swallowed)
        if chunk.truncated is not None:
            yield Truncated({"source": src.name, **chunk.truncated})
        yield Read(chunk.table.num_rows + len(chunk.quarantine))
        for kind, tables in out.tables.items():
            for table in tables:
                yield Records(kind, table)
    for kind, tables in adapter.flush().tables.items():
        for table in tables:
            yield Records(kind, table)


def check_quarantine_share(src: SourceConfig, tally: Tally) -> None:
    """A source mostly quarantined is a recipe mistake (wrong adapter, columns or format), not data to skip."""
    name = src.name
    bad = sum(tally.quarantine[name].values()) + tally.lost[name]
    total = tally.rows_read[name] + tally.lost[name]
    if src.max_quarantine >= 1.0:
        return
    if total == 0:
        raise DataError(f"source {name!r}: no rows read (an empty input?); set `max_quarantine: 1.0` on it to "
                        "accept an empty source")
    share = bad / total
    if share <= src.max_quarantine:
        return
    top = ", ".join(f"{r} {n:,}" for r, n in tally.quarantine[name].most_common(3))
    if tally.lost[name]:
        top += f", rows swallowed by an unbalanced quote {tally.lost[name]:,}"
    q = tally.example.get(name, {})
    example = (f"; first: {q.get('file')}, row {q.get('row')}, field {q.get('field') or '-'}: {q.get('detail')} "
               f"(raw: {str(q.get('raw'))[:160]!r})") if q else ""
    raise DataError(f"source {name!r}: {bad:,} of {total:,} rows quarantined ({share:.0%}, more than its "
                    f"max_quarantine {src.max_quarantine:.0%}): {top}{example}. Check the source's adapter, columns "
                    f"and format (`datakit validate` shows a sample), or set `max_quarantine: 1.0` on it to accept this")
