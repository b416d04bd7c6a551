"""`datakit`: build corpora from recipes and inspect the result.

Exit codes: 0 success; 1 the run failed; 2 the command line or the recipe is wrong (nothing ran).
"""
from __future__ import annotations

import datetime as dt
import decimal
import gc
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from embedkit.clitools import console, describe_os_error, err, fail as _fail, guarded, set_debug

if TYPE_CHECKING:
    from datakit.manifest_schema import Manifest

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="print the traceback of an unexpected error")) -> None:
    set_debug(debug)


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
    executor: str = typer.Option("local", "--executor", help="local, or ray (pip install 'embedkit\\[ray]')"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: start a local one, "
                                          "or RAY_ADDRESS)"),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="CPUs of a local Ray cluster"),
    report: bool = typer.Option(False, "--report", help="write the audit report OUT/report.html at the end"),
    allow_api_base: Optional[list[str]] = typer.Option(
        None, "--allow-api-base", metavar="URL", help="send your API keys to this api_base the recipe names "
        "(repeatable; or DATAKIT_ALLOW_API_BASE); other addresses a recipe names get no credentials"),
    allow_wide_paths: bool = typer.Option(False, "--allow-wide-paths", help="build a recipe whose allow_paths "
                                          "open more than its own folder tree (/, ~, a parent folder)"),
) -> None:
    """Build a corpus: sources -> records -> steps -> Arrow shards + manifest."""
    from datakit.engines.packs import PackError
    from datakit.manifest import InconsistentOutput
    from datakit.output import OutputBusy
    from datakit.pipeline import build as run_build
    from datakit.reading import DataError
    from datakit.sources import SourceError
    from datakit.steps import StepFailed

    loaded = _load(recipe)
    if allow_api_base:
        from datakit.llm.endpoint import allow

        allow(allow_api_base)
    _print_endpoints(loaded)
    runner = _executor(executor, address, num_cpus)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed:,} rows"),
                  TimeElapsedColumn(), console=err, disable=quiet, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def progress(source: str, rows: int) -> None:
            if source not in tasks:
                tasks[source] = bar.add_task(source, total=None)
            bar.update(tasks[source], completed=rows)

        try:
            result = run_build(loaded, out, strict=strict or None, force=force, progress=progress, executor=runner,
                               allow_wide_paths=allow_wide_paths)
        except OutputBusy as exc:
            _fail(str(exc))
        except (DataError, SourceError, PackError, InconsistentOutput, StepFailed) as exc:
            _fail(f"{exc}\nnothing was written; the previous output in {out} (if any) is unchanged")
        except OSError as exc:
            _fail(f"{describe_os_error(exc)}\nnothing was written; the previous output in {out} (if any) is "
                  "unchanged")
    if result.skipped:
        console.print(f"[green]up to date:[/] {out} (recipe and inputs unchanged; --force rebuilds)")
    typed = result.typed  # validated once
    _summary(typed)
    console.print(f"[bold green]output:[/] {out.resolve()}  (manifest: {out / 'manifest.json'})")
    if report:
        _write_report(out)
    broken = typed.incomplete_inputs
    if broken:  # the rows before each break are in the output; the rest of those files is not: not a success
        _fail("\n".join(f"source {b['source']!r}: {b['file']} is truncated: its stream broke after {b['byte']:,} "
                        f"decompressed bytes, before row {b['row']} ({b['error']}); the rows before were kept "
                        "(quarantine reason truncated_input), the rest is lost" for b in broken))


def _print_endpoints(loaded) -> None:
    """Where each LLM step's requests go, and whether the user's credentials go with them."""
    from datakit.llm.endpoint import describe
    from datakit.steps.synthesis import SynthesisConfig

    for i, step in enumerate(loaded.recipe.steps):
        if isinstance(step, SynthesisConfig):
            model = step.model or loaded.recipe.llm.model
            console.print(f"llm: step {i}:{step.type} -> {describe(model, step.api_base or loaded.recipe.llm.api_base)}",
                          highlight=False, soft_wrap=True)


def _print_reach(loaded) -> None:
    """What the recipe may read beyond its own folder (its allow_paths), the wide ones flagged."""
    from datakit.recipe import wide_roots

    wide = set(wide_roots(loaded))
    for root in loaded.sandbox.allowed:
        flag = " [bold red](wide: more than the recipe's own tree; a build needs --allow-wide-paths)[/]" \
            if root in wide else ""
        console.print(f"reads: {root}{flag}", highlight=False, soft_wrap=True)


@app.command()
def validate(recipe: Path = typer.Argument(..., help="recipe YAML"),
             sample: int = typer.Option(1000, help="rows of each source read through its adapter")) -> None:
    """Check a recipe: keys, types, adapters, steps, and a sample of every source read through its adapter
    (the share that would be quarantined, and why), so a wrong adapter or column shows before a long build."""
    from datakit.reading import Tally, source_events
    from datakit.sources import SourceError

    loaded = _load(recipe)
    console.print(f"reads: {loaded.base_dir} (the recipe's folder)", highlight=False, soft_wrap=True)
    _print_reach(loaded)
    _print_endpoints(loaded)
    table = Table("source", "adapter", "from", "sampled", "quarantined", "top reasons")
    problems = []
    tally = Tally()
    for src in loaded.recipe.sources:
        where = src.path if src.path is not None else (f"hf:{src.hf.path}" if src.hf else "sql")
        try:
            for event in source_events(src.model_copy(update={"limit": sample}), loaded.sandbox, False,
                                       min(sample, 10_000)):
                tally.take(src.name, event)
        except (SourceError, OSError, ValueError) as exc:
            table.add_row(src.name, src.adapter, str(where), "-", "[red]cannot read[/]", "")
            problems.append(str(exc) if str(exc).startswith("source ") else f"source {src.name!r}: {exc}")
            continue
        sampled, reasons, example = tally.rows_read[src.name], tally.quarantine[src.name], tally.example.get(src.name)
        bad = sum(reasons.values())
        share = bad / sampled if sampled else 1.0
        top = ", ".join(f"{r} {n}" for r, n in reasons.most_common(3))
        flag = "[red]" if share > src.max_quarantine else ""
        table.add_row(src.name, src.adapter, str(where), f"{sampled:,}", f"{flag}{bad:,} ({share:.0%})", top)
        if share > src.max_quarantine:
            ex = f"; first: {example['file']}, row {example['row']}, field {example['field'] or '-'}: " \
                 f"{example['detail']}" if example else ""
            problems.append(f"source {src.name!r}: {bad} of {sampled} sampled rows would be quarantined ({share:.0%}, "
                            f"max_quarantine {src.max_quarantine:.0%}): {top or 'no rows'}{ex}")
    console.print(table)
    if problems:
        _fail("\n".join(problems))
    console.print(f"[green]ok:[/] {recipe} ({len(loaded.recipe.sources)} sources, {len(loaded.recipe.steps)} steps, "
                  f"sha256 {loaded.recipe.sha256()[:12]})")


@app.command()
def stats(out: Path = typer.Argument(..., help="output folder of a build")) -> None:
    """Records per kind and dataset, quarantine and drops, from the manifest (checked against the shards)."""
    from datakit.manifest import checked, load

    try:
        manifest = load(checked(out))
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    _summary(manifest)


@app.command("report")
def report_cmd(
    out: Path = typer.Argument(..., help="output folder of a build"),
    dest: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file (default OUT/report.html, or "
                                        "OUT/compare.html with --compare)"),
    compare: Optional[Path] = typer.Option(None, "--compare", help="another build's output folder: both side by "
                                           "side, differences marked"),
    train_config: Optional[Path] = typer.Option(None, "--train-config", help="a `trainer` config: token lengths with "
                                                "its tokenizer, prompt and max lengths"),
    sample: int = typer.Option(5000, "--sample", min=1, help="records per kind whose token lengths are measured"),
) -> None:
    """Audit report: one self-contained HTML page (plots inlined, opens offline) of what the build did to the data:
    overview, quarantine, dedup, contamination, hard negatives, synthesis, token lengths, lineage."""
    _write_report(out, dest, compare, train_config, sample)


def _write_report(out: Path, dest: Path | None = None, compare: Path | None = None, train_config: Path | None = None,
                  sample: int = 5000) -> None:
    from datakit.report import ReportError, write_report

    try:
        path = write_report(out, dest, compare, train_config, sample)
    except ReportError as exc:
        _fail(str(exc))
    console.print(f"[bold green]report:[/] {path.resolve()}")


@app.command()
def verify(out: Path = typer.Argument(..., help="output folder of a build")) -> None:
    """Check every shard against the manifest: names, sizes, row counts and sha256 digests."""
    from datakit.manifest import load, verify as run_verify

    try:
        problems = run_verify(out, deep=True)
        manifest = load(out)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    if problems:
        _fail(f"{out}: {len(problems)} problem(s):\n" + "\n".join(problems))
    n = len(manifest.shards)
    console.print(f"[green]ok:[/] {out}: {n} shards match the manifest (names, sizes, rows, sha256)")


@app.command()
def sql(
    out: Path = typer.Argument(..., help="output folder of a build"),
    query: str = typer.Argument(..., help="SQL over views retrieval, pair, classification, quarantine"),
    as_json: bool = typer.Option(False, "--json", help="print rows as JSON lines"),
    unsafe: bool = typer.Option(False, "--unsafe", help="allow statements other than one SELECT, and file access"),
) -> None:
    """Query the shards with DuckDB (read-only: one SELECT over the views, no file access; --unsafe lifts it)."""
    import duckdb

    from datakit.query import query as run_query

    try:
        names, rows = run_query(out, query, unsafe=unsafe)
    except (FileNotFoundError, ValueError) as exc:
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


@app.command("serve-llm")
def serve_llm(
    model: str = typer.Option("smollm2", help="a packaged short name (smollm2) or a .gguf path"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8080),
    api_key: Optional[str] = typer.Option(None, help="require this bearer key"),
) -> None:
    """Serve the embedded model at an OpenAI-compatible endpoint (reach it as `openai/<model>` with api_base)."""
    from datakit.llm.serve import main as serve_main

    serve_main(["--model", model, "--host", host, "--port", str(port), *(["--api-key", api_key] if api_key else [])])


bench_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmark packs for decontamination.")
app.add_typer(bench_app, name="bench")


@bench_app.command("build")
def bench_build(
    files: Optional[list[Path]] = typer.Argument(None, help="more benchmark files (`--from-files A B C` works)"),
    out: Path = typer.Option(..., "--out", "-o", help="pack folder to write"),
    from_files: Optional[list[Path]] = typer.Option(None, "--from-files", help="benchmark files or folders (each a task; BEIR folders too)"),
    from_spec: Optional[Path] = typer.Option(None, "--from-spec", help="a YAML spec: tasks in the recipe's source "
                                             "syntax (path/hf/sql, columns, where:), e.g. a test split inside a file"),
    mteb_benchmark: Optional[str] = typer.Option(None, "--mteb", help='an MTEB benchmark, e.g. "MTEB(eng, v2)" (network)'),
    cmteb: bool = typer.Option(False, "--cmteb", help="the Chinese benchmark (C-MTEB); network"),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="comma-separated task names to keep"),
    no_corpus: bool = typer.Option(False, "--no-corpus", help="leave retrieval corpora out (they are large)"),
    fields: Optional[str] = typer.Option(None, "--fields", help="text columns of the files (default: detected)"),
    long_ngram: int = typer.Option(13, "--long-ngram", help="words in a shared run that marks contamination"),
    num_perm: int = typer.Option(128, "--num-perm", help="MinHash permutations"),
) -> None:
    """Build a benchmark pack (texts, hashes, signatures, n-gram index) from files or from MTEB."""
    from datakit.engines.packs import (PackError, PackParams, build_pack, claim_pack_folder, texts_from_files,
                                       texts_from_mteb)
    from datakit.sources import SourceError
    from embedkit.configfile import ConfigError

    claim_pack_folder(out)  # never a folder holding files datakit did not write
    task_list = [t.strip() for t in tasks.split(",")] if tasks else None
    from_files = [*(from_files or []), *(files or [])]
    try:
        if from_spec is not None:
            from datakit.engines.benchspec import texts_from_spec

            items = texts_from_spec(from_spec)
            if task_list:
                items = (it for it in items if it[0] in task_list)
        elif from_files:
            items = texts_from_files(from_files, corpus=not no_corpus,
                                     fields=[f.strip() for f in fields.split(",")] if fields else None)
            if task_list:
                items = (it for it in items if it[0] in task_list)
        elif mteb_benchmark or cmteb or task_list:
            items = texts_from_mteb(mteb_benchmark or ("C-MTEB" if cmteb else None), task_list, corpus=not no_corpus)
        else:
            _fail("give --from-files, --from-spec, --mteb, --cmteb or --tasks")
        meta = build_pack(items, out, PackParams(num_perm=num_perm, long_ngram=long_ngram))
    except ConfigError as exc:  # the spec file is wrong: nothing ran
        _fail(str(exc), 2)
    except (PackError, SourceError) as exc:
        _fail(str(exc))
    table = Table("task", "split", "texts")
    for task, splits in meta["tasks"].items():
        for split, n in splits.items():
            table.add_row(task, split, f"{n:,}")
    console.print(table)
    console.print(f"[bold green]pack:[/] {out} ({meta['n_texts']:,} texts)")


def _executor(executor: str, address: str | None = None, num_cpus: int | None = None):
    """The executor a command runs its steps on: local, or ray (a local cluster, or RAY_ADDRESS / --address)."""
    from datakit.executors import LocalExecutor

    if executor == "local":
        return LocalExecutor()
    if executor != "ray":
        _fail(f"unknown executor {executor!r}: local or ray", 2)
    try:
        from datakit.ray_executor import RayExecutor
    except ImportError as exc:
        _fail(str(exc))
    return RayExecutor(address=address, num_cpus=num_cpus)


def _apply(in_dir: Path, out: Path, step: dict[str, Any], executor: str = "local") -> None:
    from pydantic import ValidationError

    from datakit.manifest import InconsistentOutput
    from datakit.output import OutputBusy
    from datakit.pipeline import apply_steps
    from datakit.steps import StepFailed, step_config

    try:
        config = step_config(step)
    except ValidationError as exc:  # a bad option value: the command line is wrong
        _fail("; ".join(f"--{'.'.join(map(str, e['loc'][1:])).replace('_', '-')}: {e['msg']}" for e in exc.errors()), 2)
    try:
        result = apply_steps(in_dir, out, [config], executor=_executor(executor))
    except (FileNotFoundError, InconsistentOutput, OutputBusy, StepFailed) as exc:  # no manifest, busy, max_drop
        _fail(str(exc))
    except ValueError as exc:  # a bad pack
        _fail(str(exc))
    _summary(result.typed)
    console.print(f"[bold green]output:[/] {out.resolve()}")


@app.command()
def dedup(
    in_dir: Path = typer.Argument(..., help="output folder of a build"),
    out: Path = typer.Option(..., "--out", "-o"),
    method: Optional[str] = typer.Option(None, help="exact | minhash (default: the step's, minhash)"),
    threshold: Optional[float] = typer.Option(None, help="Jaccard threshold for near duplicates (default 0.8)"),
    ngram: Optional[int] = typer.Option(None, help="word n-gram size of the shingles (default 1: word sets)"),
    keep: Optional[str] = typer.Option(None, help="first | longest (default first)"),
    scope: Optional[str] = typer.Option(None, help="kind: across all datasets of a kind (default); dataset: within "
                                        "each dataset"),
    fields: Optional[list[str]] = typer.Option(None, "--fields", help="KIND=FIELD[,FIELD]: the sides compared "
                                               "for a kind (repeatable), e.g. retrieval=query"),
    executor: str = typer.Option("local", "--executor", help="local, or ray (as `datakit build`)"),
) -> None:
    """Remove exact and near-duplicate records from an existing shard folder (writes OUT/dedup.json). Options left
    out take the `dedup` step's defaults."""
    per_kind: dict[str, list[str]] = {}
    for item in fields or []:
        kind, _, names = item.partition("=")
        if not names:
            _fail(f"--fields {item!r}: write KIND=FIELD[,FIELD], e.g. retrieval=query,positive", 2)
        per_kind[kind.strip()] = [f.strip() for f in names.split(",") if f.strip()]
    given = {"method": method, "threshold": threshold, "ngram": ngram, "keep": keep, "scope": scope,
             "fields": per_kind or None}
    _apply(in_dir, out, {"type": "dedup", **{k: v for k, v in given.items() if v is not None}}, executor)


@app.command()
def decontaminate(
    in_dir: Path = typer.Argument(..., help="output folder of a build"),
    bench: list[Path] = typer.Option(..., "--bench", help="benchmark pack folder (repeatable)"),
    out: Path = typer.Option(..., "--out", "-o"),
    threshold: Optional[float] = typer.Option(None, help="MinHash Jaccard threshold (default 0.8)"),
    action: Optional[str] = typer.Option(None, help="drop (default) | flag"),
    sides: Optional[str] = typer.Option(None, help="any (default): one matching text contaminates a record; all: "
                                        "every text must match (pair data whose splits share sentences)"),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="fail when more than this share of any "
                                             "dataset would be removed"),
    executor: str = typer.Option("local", "--executor", help="local, or ray (as `datakit build`)"),
) -> None:
    """Find (and drop or flag) records that overlap benchmark test sets; writes OUT/contamination.json and
    OUT/contamination_records.jsonl. Options left out take the `decontaminate` step's defaults."""
    given = {"threshold": threshold, "action": action, "sides": sides, "max_drop": max_drop}
    _apply(in_dir, out, {"type": "decontaminate", "packs": [str(p.resolve()) for p in bench],
                         **{k: v for k, v in given.items() if v is not None}}, executor)
    from datakit.manifest import load
    from datakit.manifest_schema import Contamination

    c = load(out).contamination or Contamination()
    console.print(f"contaminated: {c.contaminated:,} of {c.records_checked:,} records; "
                  f"report: {out / 'contamination.json'}")


def _json_default(v: Any) -> Any:
    if isinstance(v, (dt.date, dt.datetime)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    return str(v)


def _cell(v: Any, width: int = 80) -> str:
    s = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=_json_default)
    return s if len(s) <= width else s[: width - 1] + "…"


def _summary(m: Manifest) -> None:
    from datakit.manifest_schema import stage_label

    table = Table(title=f"recipe {m.recipe.name} ({m.recipe.sha256[:12]})")
    table.add_column("kind")
    table.add_column("dataset")
    table.add_column("records", justify="right")
    for kind, per in m.counts.items():
        for name, n in per.items():
            table.add_row(kind, name, f"{n:,}")
    table.add_section()
    table.add_row("all", "", f"{m.records:,}")
    console.print(table)
    q = m.quarantined
    if q.n:
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(q.reasons.items(), key=lambda x: -x[1]))
        console.print(f"quarantined: {q.n:,} rows ({reasons}); see the `quarantine` view")
    if q.lost_rows:
        err.print("[bold yellow]rows lost to an unbalanced quote:[/] "
                  + ", ".join(f"{d} {n:,}" for d, n in q.lost_rows.items())
                  + " (see the `unbalanced_quote` rows of the quarantine)")
    for i, entry in enumerate(m.steps):
        reasons = m.step_dropped(i)
        if not reasons:
            continue
        per = entry.report.get("dropped_by_dataset") or {
            key.split("/", 1)[1]: {"removed": n_in - n_out}
            for key, (n_in, n_out) in entry.report.get("records", {}).items() if n_in > n_out}
        detail = "; ".join(f"{d}: " + ", ".join(f"{r} {n:,}" for r, n in c.items()) for d, c in per.items())
        console.print(f"step {i + 1} ({entry.type}) dropped " + ", ".join(f"{r} {n:,}" for r, n in reasons.items())
                      + (f" ({detail})" if detail else ""), highlight=False, soft_wrap=True, markup=False)
    for name, inputs in m.inputs.items():
        skipped = inputs.get("skipped", []) if isinstance(inputs, dict) else []
        if skipped:
            shown = ", ".join(f"{s['file']} ({s['reason']})" for s in skipped[:5])
            more = f" and {len(skipped) - 5} more (manifest inputs)" if len(skipped) > 5 else ""
            err.print(f"[bold yellow]skipped:[/] source {name!r}: {len(skipped)} file(s) not read: {shown}{more}",
                      highlight=False, soft_wrap=True)
    for warning in m.warnings:
        err.print(f"[bold yellow]warning:[/] {warning}")
    for step, e in m.synthesis.items():
        drops = ", ".join(f"{r} {n}" for r, n in sorted(e.dropped.items(), key=lambda x: -x[1])) or "none"
        failed = ", ".join(f"{k} {n}" for k, n in e.failures.items()) if e.failures else "none"
        console.print(f"synthesis {step} ({e.model}, {e.prompt}): {e.calls} calls, {e.cache_hits} cached, "
                      f"failed: {failed}; {e.prompt_tokens + e.completion_tokens:,} tokens, "
                      f"${e.cost_usd:.4f}; kept {e.kept}, dropped {drops}", highlight=False, soft_wrap=True)
    budget = m.llm_budget
    if budget and budget.reached:
        err.print(f"[bold yellow]budget reached:[/] ${budget.spent_usd:.4f} of ${budget.max_budget_usd or 0:.4f}; "
                  f"{budget.requests_not_sent} requests were not sent (their records are left unsynthesised; "
                  "raise llm.max_budget_usd and rebuild: answers already paid for come from the cache)")
    stages = " · ".join(f"{stage_label(k)} {v:.1f}s" for k, v in m.timings_s.items() if v >= 0.05)
    console.print(f"{sum(m.rows_read.values()):,} rows read; {m.duration_s:.1f}s in all"
                  + (f": {stages}" if stages else ""), highlight=False, soft_wrap=True)
    peaks = {k: v for k, v in m.peak_rss_mib.items() if k != "build"}
    if peaks:
        top = max(peaks, key=peaks.get)
        console.print(f"peak memory {peaks[top]:,.0f} MiB, during {stage_label(top)}", highlight=False)


def main(argv: list[str] | None = None) -> None:
    """The `datakit` command: one line and an exit code for whatever escapes a command (embedkit.clitools)."""
    # A build creates most of its Python objects importing (pydantic, numba's registries at its first kernel,
    # pandas) and few afterwards (its data lives in Arrow and numpy buffers). At the default thresholds (700, 10,
    # 10) a 100k-document dedup build spent 0.175 s of its ~2.5 s in 349 collections; with a young generation of
    # 100,000 objects, 0.06 s in 2 (gc callbacks; the ratios between generations kept, so old cycles are still
    # collected). Here, not at import: importing the module leaves a caller's collector alone. mypy does the same.
    gc.set_threshold(100_000, 10, 10)
    guarded(lambda: app(args=argv, prog_name="datakit"))


if __name__ == "__main__":
    main()
