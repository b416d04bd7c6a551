"""`trainer experiment`: variants built once per distinct recipe, trained per seed with the real MiniLM, scored
with `trainer eval`; resumable; bad overrides refused before anything runs; failures recorded, others go on."""
from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import pytest
from rich.console import Console

from tests.conftest import ROOT, write
from trainer.experiment import ExperimentError, load_experiment
from trainer.experiment.progress import RunBar
from trainer.experiment.report import read_results_csv, write_results
from trainer.experiment.runner import UNTRAINED, _progress, run_experiment
from trainer.experiment.spec import resolve

DATA = ROOT / "recipes" / "data"


def _files(tmp: Path, variants: str, seeds: str = "[0]") -> Path:
    write(tmp / "recipe.yaml", f"""
        name: tiny
        allow_paths: [{DATA}]
        sources:
          - {{name: articles, path: {DATA / 'articles.jsonl'}, adapter: title_body,
              instruction: "Given a title, retrieve the article it heads"}}
          - {{name: faq, path: {DATA / 'faq.csv'}, adapter: qa, columns: {{query: question, positive: answer}}}}
          - {{name: sts, path: {DATA / 'sts.csv'}, adapter: sts}}
        steps:
          - {{type: filter, min_chars: 3}}
          - {{type: mine_negatives, skip: 1, depth: 8, negatives: 2}}
    """)
    write(tmp / "train.yaml", """
        model: {name_or_path: embedded-minilm}
        data: {shards: unused, batch_size: 4, pair_batch_size: 4, negatives: 1, query_max_length: 32,
               doc_max_length: 48}
        output_dir: unused
        stages: [{steps: 2, lr: 1.0e-4, warmup_steps: 0}, {steps: 2, lr: 1.0e-4, warmup_steps: 0}]
        eval: {tasks: nowhere.yaml}      # dropped: runs are scored on the experiment's task file
    """)
    write(tmp / "tasks.yaml", f"""
        allow_paths: [{DATA}]
        tasks:
          - {{name: STS-demo, type: sts, path: {DATA / 'eval' / 'sts.tsv'}}}
          - {{name: Duplicates-demo, type: pair_classification, path: {DATA / 'eval' / 'duplicates.tsv'},
              columns: {{text_a: question1, text_b: question2, label: is_duplicate}}}}
    """)
    return write(tmp / "exp.yaml", f"recipe: recipe.yaml\ntrain: train.yaml\neval: tasks.yaml\nseeds: {seeds}\n"
                                   f"variants:\n{variants}")


def test_overrides_address_steps_sources_and_keys():
    recipe = {"sources": [{"name": "a.b", "limit": 5}, {"name": "c"}],
              "steps": [{"type": "filter"}, {"type": "paraphrase", "fields": ["query"]},
                        {"type": "paraphrase", "fields": ["text"]}, {"type": "dedup", "threshold": 0.8}]}
    out = resolve(recipe, {"steps.paraphrase#2.fields": ["query"], "steps.dedup": {"threshold": 0.9},
                           "steps.filter": None, "sources.a.b.limit": 10, "sources.c": None}, "recipe", "v")
    assert [s["type"] for s in out["steps"]] == ["paraphrase", "paraphrase", "dedup"]
    assert out["steps"][1]["fields"] == ["query"] and out["steps"][2] == {"type": "dedup", "threshold": 0.9}
    assert out["sources"] == [{"name": "a.b", "limit": 10}]
    assert recipe["steps"][0] == {"type": "filter"}  # the base is not touched
    train = resolve({"data": {"eta": 0.72}, "stages": [{"steps": 3}]}, {"data.eta": 0.5, "stages.0.steps": 7,
                                                                         "tau": 0.05}, "train", "v")
    assert train == {"data": {"eta": 0.5}, "stages": [{"steps": 7}], "tau": 0.05}
    for bad, msg in [({"steps.augment": None}, "no such step"), ({"sources.zzz.limit": 1}, "no such item"),
                     ({"llm.model": "x"}, "no key 'llm'")]:
        with pytest.raises(ExperimentError, match=msg):
            resolve(recipe, bad, "recipe", "v")


def test_bad_override_is_an_error_naming_it_before_anything_runs(tmp_path):
    exp = _files(tmp_path, "  base: {}\n  typo: {train: {data.etaa: 0.5}}\n")
    with pytest.raises(ExperimentError, match=r"(?s)variant 'typo': the training config .*data.etaa: unknown key 'etaa'"):
        load_experiment(exp)
    exp = _files(tmp_path, "  base: {}\n  gone: {recipe: {steps.paraphrase: null}}\n")
    with pytest.raises(ExperimentError, match=r"variant 'gone': recipe override 'steps.paraphrase': .*no such step"):
        load_experiment(exp)
    exp = _files(tmp_path, "  base: {}\n  slow: {train: {stages.0.schedule: cosinus}}\n")
    with pytest.raises(ExperimentError, match=r"(?s)variant 'slow': .*stages\[0\].schedule: Input should be 'cosine'"):
        load_experiment(exp)
    exp = _files(tmp_path, "  base: {}\n  bad: {recipe: {steps.filter.min_chars: many}}\n")
    with pytest.raises(ExperimentError, match=r"variant 'bad': the recipe does not validate"):
        load_experiment(exp)
    assert not (tmp_path / "out").exists()


def test_grid_is_the_cross_product_added_to_the_variants(tmp_path):
    exp = _files(tmp_path, "  base: {}\n")
    exp.write_text(exp.read_text() + "grid: {train: {data.eta: [0.5, 0.9], tau: [0.02, 0.05]}}\n")
    names = [v.name for v in load_experiment(exp).variants]
    assert names == ["base", "data.eta=0.5,tau=0.02", "data.eta=0.5,tau=0.05", "data.eta=0.9,tau=0.02",
                     "data.eta=0.9,tau=0.05"]


def test_experiment_runs_resumes_and_records_failures(tmp_path, monkeypatch):
    exp_path = _files(tmp_path, "  base: {}\n  no_mining: {recipe: {steps.mine_negatives: null}}\n"
                                "  broken: {train: {model.name_or_path: /no/such/model}}\n", seeds="[0, 1]")
    exp = load_experiment(exp_path)
    assert len({v.build_key for v in exp.variants}) == 2  # base and broken share a build
    out = tmp_path / "out"
    lines: list[str] = []
    monkeypatch.chdir(tmp_path)  # a relative --out, as users type it
    results = run_experiment(exp, Path("out"), log=lines.append)
    assert sorted(p.name for p in (out / "builds").iterdir()) == sorted({v.build_key for v in exp.variants})
    # inside each run: training progress (about ten lines a stage) and each evaluation task as it is scored
    assert any(re.match(r"    stage \d step \d+/\d+  loss \d", line) for line in lines), lines
    assert any(line.startswith("    eval STS-demo") for line in lines), lines
    ok = [r for r in results if "scores" in r]
    failed = [r for r in results if "error" in r]
    assert {(r["variant"], r["seed"]) for r in ok} == {("base", 0), ("base", 1), ("no_mining", 0), ("no_mining", 1),
                                                       (UNTRAINED, 0)}
    assert {(r["variant"], r["seed"]) for r in failed} == {("broken", 0), ("broken", 1)}
    assert "no/such/model" in failed[0]["error"]
    base = {r["seed"]: r["scores"]["STS-demo"]["value"] for r in ok if r["variant"] == "base"}
    untrained = next(r for r in ok if r["variant"] == UNTRAINED)["scores"]["STS-demo"]["value"]
    assert base[0] != untrained and base[0] != base[1]  # training moved the model; seeds differ

    paths = write_results(exp, results, out)
    rows = list(csv.DictReader(open(paths["results"])))
    assert {(r["variant"], r["seed"], r["task"]) for r in rows if r["task"]} >= {("base", "0", "STS-demo"),
                                                                                  ("no_mining", "1", "Duplicates-demo")}
    summary = paths["summary_md"].read_text()
    assert "| base | " in summary and ("within noise" in summary or "beyond noise" in summary)
    assert "broken seed 0" in summary
    assert "Corpus of base: built once, shared by 2 variants (base, broken)." in summary
    assert "| (= base) |" in summary  # broken's build time is base's, not counted twice
    # the table regenerated from the committed results.csv alone equals the one written from the runs
    regenerated = write_results(exp, read_results_csv(paths["results"]), tmp_path / "from-csv")["summary_md"]
    scores = lambda md: [line.split(" | ")[:-3] for line in md.splitlines() if line.startswith("| ")]  # noqa: E731
    assert scores(regenerated.read_text()) == scores(summary)
    assert len(scores(summary)) == 1 + 1 + 3  # header, the untrained model, three variants
    page = paths["html"].read_text()
    assert "data:image/png;base64," in page and "no_mining" in page and "<script" not in page

    # killed and restarted: finished runs are not repeated, failed ones are retried
    stamp = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/result.json")}
    # (this time with the terminal's progress bar: the two failed runs retried, each one's line kept above it)
    screen = io.StringIO()
    with RunBar(Console(file=screen, force_terminal=True, width=160)) as bar:
        results2 = run_experiment(load_experiment(exp_path), out, log=bar.line, bar=bar)
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    assert "7 runs: 5 already done, 2 to run" in shown, shown
    assert "[1/2] broken seed 0: FAILED" in shown and "[2/2] broken seed 1: FAILED" in shown
    assert re.search(r"runs .* 2/2", shown), shown
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/result.json")} == stamp
    assert len([r for r in results2 if "error" in r]) == 2

    # a third seed, reported before it runs: the finished runs only, each cell saying how many seeds it has
    exp3 = load_experiment(_files(tmp_path, "  base: {}\n", seeds="[0, 1, 2]"))
    partial: list[str] = []
    results3 = run_experiment(exp3, out, log=partial.append, report_only=True)
    assert {(r["variant"], r["seed"]) for r in results3} == {("base", 0), ("base", 1), (UNTRAINED, 0)}
    assert "  not run yet: base seed 2" in partial
    assert "[2 of 3 seeds]" in write_results(exp3, results3, out)["summary_md"].read_text()


def test_the_progress_bar_follows_training_steps_and_evaluation():
    """Inside a run the bar counts steps over both stages, shows the loss, then the task being scored."""
    bar = RunBar(Console(file=io.StringIO(), force_terminal=True))
    bar.runs(3)
    bar.run("[1/3] base seed 0", 10 + 5)
    on_record = _progress(None, [10, 5], bar)
    on_record({"stage": 1, "step": 10, "loss": {"retrieval": 0.5, "sts": 0.3}})  # the trainer numbers stages from 1
    on_record({"stage": 2, "step": 2, "loss": 0.25})
    current = bar.progress.tasks[-1]
    assert (current.completed, current.total, current.fields["note"]) == (12, 15, "loss 0.2500")
    bar.note("eval STS-demo")
    assert bar.progress.tasks[-1].fields["note"] == "eval STS-demo"
    bar.finished("[1/3] base seed 0: ok")
    assert [(t.description, t.completed) for t in bar.progress.tasks] == [("runs", 1)]


def test_plain_progress_lines_number_stages_from_one_with_their_own_length():
    """Logs and pipes get lines: `stage 1 step 5/10` during a 10-step first stage, then `stage 2 step 5/50`."""
    lines: list[str] = []
    on_record = _progress(lines.append, [10, 50])
    for step in range(1, 11):
        on_record({"stage": 1, "step": step, "loss": 0.5})
    for step in range(1, 51):
        on_record({"stage": 2, "step": step, "loss": 0.25})
    assert "    stage 1 step 5/10  loss 0.5000" in lines and "    stage 1 step 10/10  loss 0.5000" in lines
    assert "    stage 2 step 5/50  loss 0.2500" in lines and lines[-1] == "    stage 2 step 50/50  loss 0.2500"
    assert not any(line.lstrip().startswith("stage 3") for line in lines)


def test_ray_executor_runs_each_variant_as_a_task(tmp_path):
    ray = pytest.importorskip("ray")
    exp = load_experiment(_files(tmp_path, "  base: {}\n"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"DATAKIT_CACHE": os.environ["DATAKIT_CACHE"]}})
    try:
        results = run_experiment(exp, tmp_path / "out", executor="ray", log=lambda _: None)
    finally:
        ray.shutdown()
    assert sorted(r["variant"] for r in results if "scores" in r) == sorted(["base", UNTRAINED])
    run = json.loads(next((tmp_path / "out" / "runs").glob("*/result.json")).read_text())
    assert set(run["scores"]) == {"STS-demo", "Duplicates-demo"}


def test_an_edited_input_invalidates_its_build_and_its_runs(tmp_path):
    """An edit that keeps the file's size and mtime (a changed letter, the mtime put back): the build sees it
    (xxh3_128 of the inputs), and the run's key (which covers the corpus's content, the task data and the code
    versions) changes, so the run is trained again instead of its old score being printed."""
    import os
    import shutil

    shutil.copy(DATA / "faq.csv", tmp_path / "faq.csv")
    write(tmp_path / "recipe.yaml", "name: edit\nsources: [{name: faq, path: faq.csv, adapter: qa, "
                                    "columns: {query: question, positive: answer}}]\n")
    write(tmp_path / "train.yaml", """
        model: {name_or_path: embedded-minilm}
        data: {batch_size: 4, negatives: 0, query_max_length: 32, doc_max_length: 48}
        stages: [{steps: 1, lr: 1.0e-4, warmup_steps: 0}, {steps: 1, lr: 1.0e-4, warmup_steps: 0}]
    """)
    write(tmp_path / "tasks.yaml", f"allow_paths: [{DATA}]\ntasks:\n"
                                   f"  - {{name: STS-demo, type: sts, path: {DATA / 'eval' / 'sts.tsv'}}}\n")
    exp_path = write(tmp_path / "exp.yaml", "recipe: recipe.yaml\ntrain: train.yaml\neval: tasks.yaml\n")
    first = {r["variant"]: r for r in run_experiment(load_experiment(exp_path), tmp_path / "out", log=lambda _: None)}
    assert set(first["base"]["key_parts"]) >= {"corpus", "train", "seed", "eval", "versions"}
    assert {"embedkit", "torch", "transformers", "mteb"} <= set(first["base"]["key_parts"]["versions"])

    faq = tmp_path / "faq.csv"
    stat = faq.stat()
    text = faq.read_text()
    faq.write_text(text.replace("password", "passwort", 1))  # same size
    os.utime(faq, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime
    assert faq.stat().st_size == stat.st_size and faq.stat().st_mtime_ns == stat.st_mtime_ns
    second = {r["variant"]: r for r in run_experiment(load_experiment(exp_path), tmp_path / "out", log=lambda _: None)}
    assert second["base"]["key"] != first["base"]["key"]  # retrained, not reused
    assert second["base"]["key_parts"]["corpus"] != first["base"]["key_parts"]["corpus"]
    assert second[UNTRAINED]["key"] == first[UNTRAINED]["key"]  # the untrained model does not see the corpus


@pytest.mark.parametrize("csv_path", sorted((ROOT / "benchmarks" / "experiments" / "results").glob("*.csv")),
                         ids=lambda p: p.stem)
def test_published_tables_are_the_committed_results_regenerated(csv_path: Path, tmp_path: Path):
    """Every experiment table RESULTS.md shows from a committed results.csv is that CSV's table, unedited: the
    rows `trainer experiment --report-only --results-csv` writes appear, in order, in the committed .md and in
    RESULTS.md (a hand-edited cell, a renamed row or a stale CSV fails this)."""
    from trainer.experiment.report import summarise, summary_markdown

    exp = load_experiment(ROOT / "benchmarks" / "experiments" / f"{csv_path.stem}.yaml")
    runs = read_results_csv(csv_path)
    table = [line for line in summary_markdown(exp, *summarise(exp, runs), runs, tmp_path).splitlines()
             if line.startswith("|")]
    assert len(table) == 2 + 1 + len(exp.variants)  # header and rule, the untrained model, every variant
    block = "\n".join(table)
    assert block in csv_path.with_suffix(".md").read_text(encoding="utf-8")
    assert block in (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8"), \
        f"RESULTS.md does not show {csv_path.name}'s table as `make results-tables` writes it"
