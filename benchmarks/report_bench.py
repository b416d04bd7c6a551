"""How long `datakit report` takes on a large build, per section, against one DuckDB scan of the same shards.

Writes a synthetic corpus (`--rows` QA rows, a tenth as many classification rows, markup and Chinese mixed
in), builds it with `datakit build` (filter + exact dedup), then times each section of the report and the
whole page, and a plain `SELECT count(*), sum(length(...))` over the shards (the peer: reading the data once).

    python benchmarks/report_bench.py [--rows 1000000]
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("data model train query answer passage vector index search rank score label topic news bank card "
         "transfer weather river mountain city history science music film 数据 模型 检索 问题 答案").split()


def corpus(folder: Path, rows: int) -> Path:
    rng = random.Random(0)
    with open(folder / "qa.jsonl", "w", encoding="utf-8") as fh:
        for i in range(rows):
            q = " ".join(rng.choices(WORDS, k=rng.randint(4, 14))) + f" {i}?"
            a = " ".join(rng.choices(WORDS, k=rng.randint(20, 200))) + (" <b>bold</b>" if i % 50 == 0 else "")
            fh.write(json.dumps({"question": q, "answer": a if i % 997 else ""}, ensure_ascii=False) + "\n")
    with open(folder / "labels.jsonl", "w", encoding="utf-8") as fh:
        for i in range(rows // 10):
            fh.write(json.dumps({"text": " ".join(rng.choices(WORDS, k=rng.randint(3, 30))) + f" {i}",
                                 "label": f"t{i % 20}"}, ensure_ascii=False) + "\n")
    recipe = folder / "recipe.yaml"
    recipe.write_text("name: report-bench\nsources:\n"
                      "  - {name: qa, path: qa.jsonl, adapter: qa, columns: {query: question, positive: answer},"
                      " instruction: Answer the question}\n"
                      "  - {name: labels, path: labels.jsonl, adapter: classification, instruction: Classify}\n"
                      "steps:\n  - {type: filter, min_chars: 3}\n  - {type: dedup, method: exact}\n")
    return recipe


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--sample", type=int, default=5000)
    args = ap.parse_args()
    from datakit.query import connect
    from datakit.pipeline import build
    from datakit.recipe import load_recipe
    from datakit.report import write_report
    from datakit.report import collect as c

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        out = folder / "out"
        build(load_recipe(corpus(folder, args.rows)), out)
        build_s = time.perf_counter() - t
        build_dir, manifest = c.load_build(out)
        records = manifest.records
        con = connect(build_dir)
        t = time.perf_counter()
        con.execute("SELECT count(*), sum(length(query)), sum(length(positive)) FROM retrieval").fetchall()
        con.execute("SELECT count(*), sum(length(text)) FROM classification").fetchall()
        scan_s = time.perf_counter() - t
        timings = {}
        for name, fn in [("overview", lambda: c.overview(manifest)),
                         ("quarantine", lambda: c.quarantine(manifest, con)),
                         ("dedup", lambda: c.dedup(manifest, build_dir)),
                         ("lengths", lambda: c.token_lengths(manifest, con, c.default_lengths(), args.sample)),
                         ("lineage", lambda: c.lineage(manifest, con))]:
            t = time.perf_counter()
            fn()
            timings[name] = time.perf_counter() - t
        con.close()
        t = time.perf_counter()
        page = write_report(out, folder / "report.html", sample_rows=args.sample)
        total_s = time.perf_counter() - t
        print(f"\nreport on a build of {records:,} records ({args.rows:,} QA rows read; build {build_s:.0f} s); "
              f"page {page.stat().st_size / 1e6:.1f} MB\n")
        print("| what | seconds |\n|---|---:|")
        print(f"| peer: one DuckDB scan of the text columns | {scan_s:.2f} |")
        for name, s in timings.items():
            print(f"| section {name} | {s:.2f} |")
        print(f"| whole report (`write_report`, incl. loading the tokenizer and plotly) | {total_s:.2f} |")


if __name__ == "__main__":
    main()
