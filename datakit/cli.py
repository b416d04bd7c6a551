"""`datakit`: build corpora from recipes and inspect the result."""
from __future__ import annotations

import datetime as dt
import decimal
import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _load(recipe: Path):
    from datakit.recipe import RecipeError, load_recipe

    try:
        return load_recipe(recipe)
    except RecipeError as exc:
        _fail(str(exc), 2)


@app.command()
def build(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder"),
    strict: bool = typer.Option(False, "--strict", help="stop at the first bad row (naming file, row, field)"),
    force: bool = typer.Option(False, "--force", help="rebuild even if the output is up to date"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Build a corpus: sources -> records -> steps -> Arrow shards + manifest."""
    from datakit.pipeline import DataError, build as run_build
    from datakit.sources import SourceError

    loaded = _load(recipe)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed:,} rows"),
                  TimeElapsedColumn(), console=err, disable=quiet, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def progress(source: str, rows: int) -> None:
            if source not in tasks:
                tasks[source] = bar.add_task(source, total=None)
            bar.update(tasks[source], completed=rows)

        try:
            result = run_build(loaded, out, strict=strict or None, force=force, progress=progress)
        except (DataError, SourceError) as exc:
            _fail(f"{exc}\nnothing was written; the previous output in {out} (if any) is unchanged")
    if result.skipped:
        console.print(f"[green]up to date:[/] {out} (recipe and inputs unchanged; --force rebuilds)")
    _summary(result.manifest)
    console.print(f"[bold green]output:[/] {out.resolve()}  (manifest: {out / 'manifest.json'})")


@app.command()
def validate(recipe: Path = typer.Argument(..., help="recipe YAML")) -> None:
    """Check a recipe: keys, types, adapters, steps, and that every source can be opened."""
    from datakit.adapters import make_adapter
    from datakit.sources import SourceError, read_source

    loaded = _load(recipe)
    table = Table("source", "adapter", "from", "columns", "first rows")
    problems = []
    for src in loaded.recipe.sources:
        where = src.path if src.path is not None else (f"hf:{src.hf.path}" if src.hf else "sql")
        adapter = make_adapter(src)
        columns = adapter.columns().names
        try:
            chunk = next(iter(read_source(src, loaded.base_dir, adapter.columns(), batch_rows=5)), None)
            status = f"{chunk.table.num_rows} read" if chunk else "empty"
        except (SourceError, OSError) as exc:
            status = "[red]cannot read[/]"
            problems.append(str(exc))
        table.add_row(src.name, src.adapter, str(where), ", ".join(columns), status)
    console.print(table)
    if problems:
        _fail("\n".join(problems))
    console.print(f"[green]ok:[/] {recipe} ({len(loaded.recipe.sources)} sources, {len(loaded.recipe.steps)} steps, "
                  f"sha256 {loaded.recipe.sha256()[:12]})")


@app.command()
def stats(out: Path = typer.Argument(..., help="output folder of a build")) -> None:
    """Records per kind and dataset, quarantine and drops, from the manifest."""
    from datakit.shards import read_manifest

    try:
        manifest = read_manifest(out)
    except FileNotFoundError as exc:
        _fail(str(exc))
    _summary(manifest)


@app.command()
def sql(
    out: Path = typer.Argument(..., help="output folder of a build"),
    query: str = typer.Argument(..., help="SQL over views retrieval, pair, classification, quarantine"),
    as_json: bool = typer.Option(False, "--json", help="print rows as JSON lines"),
) -> None:
    """Query the shards with DuckDB."""
    import duckdb

    from datakit.audit import query as run_query

    try:
        names, rows = run_query(out, query)
    except FileNotFoundError as exc:
        _fail(str(exc))
    except duckdb.Error as exc:
        _fail(f"query failed: {exc}")
    if as_json:
        for row in rows:
            sys.stdout.write(json.dumps(dict(zip(names, row)), ensure_ascii=False, default=_json_default) + "\n")
        return
    table = Table(*names)
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    console.print(table)


def _json_default(v: Any) -> Any:
    if isinstance(v, (dt.date, dt.datetime)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    return str(v)


def _cell(v: Any, width: int = 80) -> str:
    s = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=_json_default)
    return s if len(s) <= width else s[: width - 1] + "…"


def _summary(manifest: dict[str, Any]) -> None:
    table = Table(title=f"recipe {manifest['recipe']['name']} ({manifest['recipe']['sha256'][:12]})")
    table.add_column("kind")
    table.add_column("dataset")
    table.add_column("records", justify="right")
    total = 0
    for kind, per in manifest["counts"].items():
        for name, n in per.items():
            table.add_row(kind, name, f"{n:,}")
            total += n
    table.add_section()
    table.add_row("all", "", f"{total:,}")
    console.print(table)
    q = manifest["quarantined"]
    if q["n"]:
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(q["reasons"].items(), key=lambda x: -x[1]))
        console.print(f"quarantined: {q['n']:,} rows ({reasons}); see the `quarantine` view")
    for step, reasons in manifest.get("dropped", {}).items():
        if reasons:
            console.print(f"dropped by {step}: " + ", ".join(f"{r} {n}" for r, n in reasons.items()))
    rate = manifest.get("rows_per_s")
    console.print(f"read {sum(manifest['rows_read'].values()):,} rows in {manifest['duration_s']:.1f}s"
                  + (f" ({rate:,.0f} rows/s)" if rate else ""))


if __name__ == "__main__":
    app()
