"""`trainer eval` against the references, against mteb run directly, and its throughput (issue #11).

1. Reference checks with the packaged all-MiniLM-L6-v2, data from ../shared/data:
   STSBenchmark test (MTEB's published cosine Spearman 0.82032, within 0.001), Banking77 (published accuracy
   0.8004, within 0.01), SciFact BEIR (our nDCG@10 equals pytrec_eval's on the TREC run file we write, 1e-6).
2. Overhead: `trainer eval` (task file -> our encoder) against `mteb.evaluate(SentenceTransformer(...))` on the
   same local task objects, same model, in the same run, each timed end to end after the model is loaded.
3. Throughput (texts/s embedded) for MiniLM and SmolLM2 on distinct STS-B test sentences.

    python benchmarks/eval_bench.py [--skip-scifact] [--repeat 2]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

REFERENCE_TASKS = ROOT / "benchmarks" / "recipes" / "reference-tasks.yaml"
SCIFACT = f"""
  - name: SciFact-local
    type: retrieval
    beir: {SHARED}/scifact/beir
"""


def reference_checks(out: Path, scifact: bool) -> list[tuple]:
    import pytrec_eval

    from trainer.eval import EvalRequest, evaluate_models
    from trainer.eval.trec import read_run

    out.mkdir(parents=True, exist_ok=True)
    path = out / "tasks.yaml"  # the reference tasks, read where they are, plus SciFact
    text = REFERENCE_TASKS.read_text(encoding="utf-8").replace("../../../shared/data", str(SHARED))
    path.write_text(text + (SCIFACT if scifact else ""), encoding="utf-8")
    t0 = time.time()
    [summary] = evaluate_models(EvalRequest(models=["embedded-minilm"], out=str(out / "results"),
                                            tasks_file=str(path), save_predictions=True), log=lambda _: None)
    got = {o.task: o for o in summary.outcomes}
    rows = [("STSBenchmark test, cosine Spearman", got["STSBenchmark"].value, 0.82032, 0.001, "MTEB leaderboard"),
            ("Banking77 test, accuracy", got["Banking77Classification"].value, 0.8004, 0.01, "MTEB leaderboard")]
    if scifact:
        [run_file] = (out / "results" / "predictions").glob("*/*/SciFact-local.default.test.run")
        qrels: dict[str, dict[str, int]] = {}
        for line in (SHARED / "scifact" / "beir" / "qrels" / "test.tsv").read_text().splitlines()[1:]:
            q, d, s = line.split("\t")
            qrels.setdefault(q, {})[d] = int(s)
        run = read_run(run_file)
        qrels = {q: v for q, v in qrels.items() if q in run}  # the copy's queries.jsonl lacks some test queries
        per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
        ref = float(np.mean([r["ndcg_cut_10"] for r in per_query.values()]))
        rows.append(("SciFact (BEIR copy) nDCG@10", got["SciFact-local"].value, ref, 1e-6,
                     f"pytrec_eval on our run file ({len(per_query)} queries)"))
    print(f"reference checks: {time.time() - t0:.0f} s")
    return rows


def overhead(out: Path, repeat: int) -> list[tuple]:
    """Wall time of both paths on the same task objects (data read once, before timing)."""
    import mteb
    from sentence_transformers import SentenceTransformer

    from trainer.eval.encoder import EvalEncoder, load_backend
    from trainer.eval.run import evaluate_tasks, local_tasks, quiet
    from trainer.eval.taskfile import load_task_file
    from trainer.config import resolve_name

    with quiet():
        tasks = local_tasks(load_task_file(REFERENCE_TASKS))
        st = SentenceTransformer(resolve_name("embedded-minilm")[0], device="cpu")
        backend = load_backend("embedded-minilm")
    rows = []
    for task in tasks:
        ours_t, theirs_t = [], []
        for _ in range(repeat):  # interleaved, so drift on this shared machine hits both
            t0 = time.perf_counter()
            [o] = evaluate_tasks(EvalEncoder(backend), [task], None, log=lambda _: None)
            ours_t.append(time.perf_counter() - t0)
            with quiet():
                t0 = time.perf_counter()
                r = mteb.evaluate(st, task, cache=None, show_progress_bar=False, co2_tracker=False)
                theirs_t.append(time.perf_counter() - t0)
        rows.append((task.metadata.name, min(ours_t), min(theirs_t), o.value, r.task_results[0].get_score()))
    return rows


def throughput(n: int) -> list[tuple]:
    from trainer.eval.encoder import load_backend
    from trainer.eval.run import quiet

    lines = [x.split("\t") for x in (SHARED / "stsb" / "sts-test.csv").read_text(encoding="utf-8").splitlines()]
    texts = list(dict.fromkeys(t for x in lines if len(x) >= 7 for t in (x[5], x[6])))[:n]
    rows = []
    for name in ("embedded-minilm", "embedded-smollm2"):
        with quiet():
            backend = load_backend(name)
        backend.embed(texts[:32], "")  # warm-up
        t0 = time.perf_counter()
        backend.embed(texts, "")
        rows.append((name, len(texts), len(texts) / (time.perf_counter() - t0)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-scifact", action="store_true", help="skip the SciFact run (~7 min on 2 cores)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--texts", type=int, default=512)
    args = ap.parse_args()
    if not SHARED.exists():
        sys.exit("needs ../shared/data")
    out = Path(tempfile.mkdtemp(prefix="eval_bench_"))

    print("\n| check | ours | reference | tolerance | within | reference from |\n|---|---:|---:|---:|---|---|")
    missed = []
    for name, ours, ref, tol, source in reference_checks(out / "ref", not args.skip_scifact):
        print(f"| {name} | {ours:.6f} | {ref:.6f} | {tol:g} | {'yes' if abs(ours - ref) <= tol else 'NO'} | {source} |")
        if abs(ours - ref) > tol:
            missed.append(name)

    print("\n| task | trainer eval s | mteb.evaluate s | overhead | our score | mteb's score |\n|---|---:|---:|---:|---:|---:|")
    for name, ours, theirs, a, b in overhead(out / "overhead", args.repeat):
        print(f"| {name} | {ours:.1f} | {theirs:.1f} | {100 * (ours / theirs - 1):+.0f}% | {a:.5f} | {b:.5f} |")
        if ours > 1.10 * theirs:  # target: under 10% over mteb.evaluate on the same task
            missed.append(f"{name} overhead {100 * (ours / theirs - 1):+.0f}% > 10%")

    print("\n| model | texts | texts/s |\n|---|---:|---:|")
    for name, n, rate in throughput(args.texts):
        print(f"| {name} | {n} | {rate:.0f} |")
    if missed:
        sys.exit(f"missed the reference: {', '.join(missed)}")


if __name__ == "__main__":
    main()
