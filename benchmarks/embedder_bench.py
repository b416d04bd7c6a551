"""Issue #42's targets, run and checked: does what a user builds make a better model?

`smollm2`: SmolLM2-135M made into an embedder by `recipes/smollm2` (corpus.yaml, train.yaml) against
- the raw model, bidirectional and causal (mean pooling), untrained;
- sentence-transformers' own trainer on the same model, corpus, batch size and steps (`st_baseline.py`, its
  defaults), bidirectional and causal;
- the untuned all-MiniLM-L6-v2 (a reference: MTEB's published STS12-16 + BIOSSES average is about 0.79).
Every system is scored on held-out tasks whose texts are not in the corpus (corpus.yaml decontaminates against
them): STS12-16 and BIOSSES for every seed (`eval-sts.yaml`), EmotionClassification and SciFact for seed 0
(`eval-other.yaml`, `--other`).

`minilm`: all-MiniLM-L6-v2 fine-tuned with `recipes/minilm/train.yaml` on (a) a corpus holding STS-B, Banking77
and WikiQA train (`benchmarks/experiments/corpus.yaml`), scored on their test splits, and (b) SciFact's train
claims with mined negatives (`recipes/minilm/corpus-scifact.yaml`), scored on SciFact test.

Targets (the script exits 1 when one is missed):
- smollm2: ours above both raw models by at least 0.2 on the STS mean; ours within 0.10 of MiniLM's STS mean;
  ours above sentence-transformers' trainer (bidirectional, its defaults) on the mean of the held-out tasks,
  beyond seed noise (the difference of the means over seeds larger than twice its standard error);
- minilm: at least the untuned score on every test split (mean over seeds), above it beyond noise on two;
  SciFact nDCG@10 +0.03 or more.

Runs are kept in WORK (default out/embedder-bench) and skipped when done, so the script resumes; the table and
WORK/results.csv are rewritten each time. Each run is a subprocess whose peak RSS is sampled (`_measure.py`).

    python benchmarks/embedder_bench.py smollm2 [--seeds 0 1 2] [--other] [--threads N]
    python benchmarks/embedder_bench.py minilm [--seeds 0 1 2]
    python benchmarks/embedder_bench.py check WORK/results.csv     # the targets on results already there
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _source import use_configured_source  # noqa: E402

use_configured_source()
# the CLIs runs call: this venv's, or EMBEDDER_BENCH_BIN (a frozen copy of the code, for runs that go on while
# the working tree changes)
BIN = Path(os.environ.get("EMBEDDER_BENCH_BIN", Path(sys.executable).parent))
SMOL = ROOT / "recipes" / "smollm2"
MINI = ROOT / "recipes" / "minilm"
STS = ("STS12", "STS13", "STS14", "STS15", "STS16", "BIOSSES")


def sh(cmd: list[str], log: Path, threads: int | None) -> tuple[float, int]:
    """Run `cmd` (output to `log`); (seconds, peak RSS bytes of its process tree). A failure raises."""
    from _measure import measure

    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {})}
    seconds, peak, out = measure(cmd, env)
    log.write_text(out, encoding="utf-8")
    return seconds, peak


def scores(folder: Path) -> dict[str, float]:
    """{task: main score} from a `trainer eval` results folder (mteb's layout)."""
    out = {}
    for path in folder.glob("results/*/*/*.json"):
        if path.name in ("model_meta.json",):
            continue
        doc = json.loads(path.read_text())
        split = doc["scores"].get("test") or next(iter(doc["scores"].values()))
        out[doc["task_name"]] = float(np.mean([s["main_score"] for s in split]))
    return out


class Bench:
    def __init__(self, work: Path, threads: int | None):
        self.work, self.threads = work, threads
        work.mkdir(parents=True, exist_ok=True)
        self.rows_path = work / "results.csv"
        self.rows = list(csv.DictReader(open(self.rows_path))) if self.rows_path.exists() else []

    def done(self, system: str, seed: int, tasks_file: Path) -> bool:
        return (self.work / f"{system}-s{seed}" / f"eval-{tasks_file.stem}" / "eval-status.json").exists() and \
            any(r["system"] == system and int(r["seed"]) == seed and r["tasks"] == tasks_file.stem for r in self.rows)

    def record(self, system: str, seed: int, tasks_file: Path, found: dict[str, float], train: dict) -> None:
        self.rows = [r for r in self.rows if not (r["system"] == system and int(r["seed"]) == seed
                                                  and r["tasks"] == tasks_file.stem)]
        for task, value in sorted(found.items()):
            self.rows.append({"system": system, "seed": seed, "tasks": tasks_file.stem, "task": task,
                              "score": f"{value:.6f}", **{k: train.get(k, "") for k in
                                                         ("train_s", "tokens_per_s", "peak_rss_mib", "steps")}})
        with open(self.rows_path, "w", newline="") as fh:
            w = csv.DictWriter(fh, ["system", "seed", "tasks", "task", "score", "train_s", "tokens_per_s",
                                    "peak_rss_mib", "steps"])
            w.writeheader()
            w.writerows(self.rows)

    def evaluate(self, system: str, seed: int, model: str, tasks_file: Path, train: dict) -> None:
        if self.done(system, seed, tasks_file):
            return
        folder = self.work / f"{system}-s{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / f"eval-{tasks_file.stem}"
        from trainer.eval.status import read_status

        if read_status(out)[0] == "complete":
            self.record(system, seed, tasks_file, scores(out), train)  # scored by an earlier (killed) bench
            return
        print(f"  eval {system} seed {seed} on {tasks_file.name}", flush=True)
        sh([str(BIN / "trainer"), "eval", model, "--tasks", str(tasks_file), "--out", str(out)],
           folder / f"eval-{tasks_file.stem}.log", self.threads)
        self.record(system, seed, tasks_file, scores(out), train)

    def train_ours(self, seed: int, config: Path, shards: Path, system: str = "ours") -> tuple[str, dict]:
        import yaml

        folder = self.work / f"{system}-s{seed}"
        model = folder / "run" / "model"
        stats = folder / "train.json"
        if not stats.exists():
            folder.mkdir(parents=True, exist_ok=True)
            cfg = yaml.safe_load(config.read_text())
            cfg["seed"] = seed
            cfg.setdefault("data", {})["seed"] = seed
            cfg["model"]["name_or_path"] = cfg["model"]["name_or_path"]  # aliases resolve anywhere
            run_cfg = folder / "train.yaml"
            run_cfg.write_text(yaml.safe_dump(cfg, sort_keys=False))
            print(f"  train {system} seed {seed}", flush=True)
            seconds, peak = sh([str(BIN / "trainer"), "run", str(run_cfg), "--shards", str(shards), "--out",
                                str(folder / "run"), "--restart"], folder / "train.log", self.threads)
            log = [json.loads(line) for line in open(folder / "run" / "log.jsonl") if '"tokens_per_s"' in line]
            train_s = sum(max(r.get("stage_s", 0) for r in log if r["stage"] == st) for st in {r["stage"] for r in log})
            stats.write_text(json.dumps({"train_s": round(train_s or seconds, 1),
                                         "wall_s": round(seconds, 1), "peak_rss_mib": round(peak / 2**20),
                                         "tokens_per_s": round(float(np.mean([r["tokens_per_s"] for r in log])), 1),
                                         "steps": sum(s["steps"] for s in cfg["stages"])}))
        return str(model), json.loads(stats.read_text())

    def train_st(self, seed: int, shards: Path, steps: int, causal: bool, batch: int, negatives: int,
                 max_length: int, lr: float | None = None, system: str | None = None) -> tuple[str, dict]:
        system = system or ("st-causal" if causal else "st")
        folder = self.work / f"{system}-s{seed}"
        stats = folder / "st" / "stats.json"
        if not stats.exists():
            folder.mkdir(parents=True, exist_ok=True)
            print(f"  train {system} seed {seed}", flush=True)
            cmd = [sys.executable, str(ROOT / "benchmarks" / "st_baseline.py"), "--shards", str(shards), "--model",
                   "embedded-smollm2", "--steps", str(steps), "--batch-size", str(batch), "--negatives",
                   str(negatives), "--max-length", str(max_length), "--seed", str(seed), "--out", str(folder / "st")]
            cmd += ["--causal"] if causal else []
            cmd += ["--lr", str(lr)] if lr else []
            _, peak = sh(cmd, folder / "train.log", self.threads)
            st = json.loads(stats.read_text())
            stats.write_text(json.dumps({**st, "peak_rss_mib": round(peak / 2**20)}))
        return str(folder / "st" / "model"), json.loads(stats.read_text())

    def raw(self, causal: bool) -> str:
        """The untrained SmolLM2 as a SentenceTransformer folder (mean pooling), bidirectional or causal."""
        folder = self.work / ("raw-causal" if causal else "raw") / "model"
        if not (folder / "modules.json").exists():
            from st_baseline import export_start_model

            export_start_model("embedded-smollm2", folder, causal, 512)
        return str(folder)


def smollm2(args) -> None:
    import yaml

    bench = Bench(args.work, args.threads)
    corpus = args.work / "corpus"
    if not (corpus / "manifest.json").exists():
        print("build recipes/smollm2/corpus.yaml", flush=True)
        sh([str(BIN / "datakit"), "build", str(SMOL / "corpus.yaml"), "--out", str(corpus), "-q"],
           args.work / "build.log", args.threads)
    cfg = yaml.safe_load((SMOL / "train.yaml").read_text())
    steps = sum(s["steps"] for s in cfg["stages"])
    d = cfg["data"]
    sts, other = SMOL / "eval-sts.yaml", SMOL / "eval-other.yaml"
    bench.evaluate("minilm", 0, "embedded-minilm", sts, {})
    bench.evaluate("raw", 0, bench.raw(causal=False), sts, {})
    bench.evaluate("raw-causal", 0, bench.raw(causal=True), sts, {})
    for seed in args.seeds:
        model, stats = bench.train_ours(seed, SMOL / "train.yaml", corpus)
        bench.evaluate("ours", seed, model, sts, stats)
        model, stats = bench.train_st(seed, corpus, steps, False, d["batch_size"], d["negatives"], d["doc_max_length"])
        bench.evaluate("st", seed, model, sts, stats)
    if args.causal_st:
        model, stats = bench.train_st(0, corpus, steps, True, d["batch_size"], d["negatives"], d["doc_max_length"])
        bench.evaluate("st-causal", 0, model, sts, stats)
    if args.other:
        for system, model in (("minilm", "embedded-minilm"), ("raw", bench.raw(False)),
                              ("ours", str(args.work / "ours-s0" / "run" / "model")),
                              ("st", str(args.work / "st-s0" / "st" / "model"))):
            bench.evaluate(system, 0, model, other, {})
    sys.exit(report_smollm2(bench.rows))


def _by(rows: list[dict], system: str, tasks: tuple[str, ...] | None = None) -> dict[int, float]:
    """{seed: mean score over `tasks` (default: the STS tasks)} of a system, seeds with every task only."""
    tasks = tasks or STS
    out: dict[int, list[float]] = {}
    for r in rows:
        if r["system"] == system and r["task"] in tasks:
            out.setdefault(int(r["seed"]), []).append(float(r["score"]))
    return {s: float(np.mean(v)) for s, v in out.items() if len(v) == len(tasks)}


def _beyond(a: dict[int, float], b: dict[int, float]) -> tuple[float, float | None]:
    """(difference of the means, twice its standard error over seeds, None with fewer than two seeds each)."""
    if not a or not b:
        return math.nan, None
    diff = float(np.mean(list(a.values())) - np.mean(list(b.values())))
    if len(a) < 2 or len(b) < 2:
        return diff, None
    se = math.sqrt(np.var(list(a.values()), ddof=1) / len(a) + np.var(list(b.values()), ddof=1) / len(b))
    return diff, 2 * se


def report_smollm2(rows: list[dict]) -> int:
    systems = ["minilm", "raw", "raw-causal", "ours", "st", "st-causal"]
    tasks = sorted({r["task"] for r in rows}, key=lambda t: (t not in STS, t))
    print("\n| system | seeds | " + " | ".join(tasks) + " | STS mean | train s | tokens/s | peak RSS MiB |")
    print("|---|---:|" + "---:|" * (len(tasks) + 4))
    for system in systems:
        mine = [r for r in rows if r["system"] == system]
        if not mine:
            continue
        seeds = sorted({int(r["seed"]) for r in mine})
        cells = []
        for t in tasks:
            v = [float(r["score"]) for r in mine if r["task"] == t]
            cells.append(f"{np.mean(v):.4f}" + (f" ± {np.std(v, ddof=1):.4f}" if len(v) > 1 else "") if v else "-")
        mean = _by(rows, system)
        m = f"{np.mean(list(mean.values())):.4f}" + (f" ± {np.std(list(mean.values()), ddof=1):.4f}"
                                                     if len(mean) > 1 else "") if mean else "-"
        tr = [r for r in mine if r["train_s"]]
        extra = (f"{np.mean([float(r['train_s']) for r in tr]):.0f} | "
                 f"{np.mean([float(r['tokens_per_s']) for r in tr]):.0f} | "
                 f"{np.mean([float(r['peak_rss_mib']) for r in tr]):.0f}") if tr else "- | - | -"
        print(f"| {system} | {', '.join(map(str, seeds))} | " + " | ".join(cells) + f" | {m} | {extra} |")
    missed = []
    ours, minilm = _by(rows, "ours"), _by(rows, "minilm")
    for raw in ("raw", "raw-causal"):
        diff, _ = _beyond(ours, _by(rows, raw))
        if not diff >= 0.2:
            missed.append(f"ours - {raw} on the STS mean: {diff:+.4f} (target >= +0.2)")
    diff, _ = _beyond(ours, minilm)
    if not diff >= -0.10:
        missed.append(f"ours - untuned MiniLM on the STS mean: {diff:+.4f} (target >= -0.10)")
    diff, noise = _beyond(ours, _by(rows, "st"))
    print(f"\nours - sentence-transformers' trainer (STS mean): {diff:+.4f}"
          + (f", twice the standard error {noise:.4f}: {'beyond' if abs(diff) > noise else 'within'} noise"
             if noise is not None else " (one seed: no noise estimate)"))
    if noise is None or not diff > noise:
        missed.append(f"ours above sentence-transformers' trainer beyond seed noise: {diff:+.4f}"
                      + (f" (2 SE {noise:.4f})" if noise is not None else " (fewer than two seeds)"))
    for m in missed:
        print(f"target missed: {m}")
    if not missed:
        print("targets met")
    return 1 if missed else 0


def minilm(args) -> None:
    bench = Bench(args.work, args.threads)
    general = args.work / "corpus-general"
    scifact = args.work / "corpus-scifact"
    for recipe, out in ((MINI / "corpus.yaml", general),
                        (MINI / "corpus-scifact.yaml", scifact)):
        if not (out / "manifest.json").exists():
            print(f"build {recipe.name}", flush=True)
            sh([str(BIN / "datakit"), "build", str(recipe), "--out", str(out), "-q"], args.work / "build.log",
               args.threads)
    general_tasks = MINI / "eval.yaml"
    scifact_tasks = MINI / "eval-scifact.yaml"
    bench.evaluate("minilm", 0, "embedded-minilm", general_tasks, {})
    bench.evaluate("minilm", 0, "embedded-minilm", scifact_tasks, {})
    for seed in args.seeds:
        model, stats = bench.train_ours(seed, MINI / "train.yaml", general, system="general")
        bench.evaluate("general", seed, model, general_tasks, stats)
        model, stats = bench.train_ours(seed, MINI / "train-scifact.yaml", scifact, system="scifact")
        bench.evaluate("scifact", seed, model, scifact_tasks, stats)
    sys.exit(report_minilm(bench.rows))


def report_minilm(rows: list[dict]) -> int:
    missed = []
    base = {r["task"]: float(r["score"]) for r in rows if r["system"] == "minilm"}
    print("\n| task | untuned MiniLM | fine-tuned (mean ± std over seeds) | difference | noise (2 SE) |")
    print("|---|---:|---:|---:|---:|")
    above = 0
    for system in ("general", "scifact"):
        tasks = sorted({r["task"] for r in rows if r["system"] == system})
        for t in tasks:
            v = [float(r["score"]) for r in rows if r["system"] == system and r["task"] == t]
            mean, sd = float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
            noise = 2 * sd / math.sqrt(len(v)) if len(v) > 1 else None
            diff = mean - base.get(t, math.nan)
            print(f"| {t} | {base.get(t, math.nan):.4f} | {mean:.4f} ± {sd:.4f} | {diff:+.4f} | "
                  f"{'-' if noise is None else f'{noise:.4f}'} |")
            if system == "general":
                if diff < 0:
                    missed.append(f"{t}: {diff:+.4f} below the untuned model")
                if noise is not None and diff > noise:
                    above += 1
            elif t == "SciFact" and not diff >= 0.03:
                missed.append(f"SciFact: {diff:+.4f} (target >= +0.03)")
    if above < 2:
        missed.append(f"above the untuned model beyond noise on {above} task(s) (target: 2)")
    for m in missed:
        print(f"target missed: {m}")
    if not missed:
        print("targets met")
    return 1 if missed else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    for name in ("smollm2", "minilm"):
        p = sub.add_parser(name)
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        p.add_argument("--work", type=Path, default=ROOT / "out" / f"embedder-bench-{name}")
        p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: all)")
        if name == "smollm2":
            p.add_argument("--other", action="store_true", help="also EmotionClassification and SciFact (seed 0)")
            p.add_argument("--causal-st", action="store_true", help="also sentence-transformers' trainer, causal")
    p = sub.add_parser("check")
    p.add_argument("csv", type=Path)
    args = ap.parse_args()
    if args.what == "smollm2":
        smollm2(args)
    elif args.what == "minilm":
        minilm(args)
    else:
        rows = list(csv.DictReader(open(args.csv)))
        systems = {r["system"] for r in rows}
        sys.exit(report_smollm2(rows) if "ours" in systems else report_minilm(rows))


if __name__ == "__main__":
    main()
