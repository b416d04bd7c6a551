"""`trainer eval`: local task files through mteb's evaluators, with the real packaged MiniLM.

Every metric is checked against a reference computed outside our code on the same inputs: scipy for STS,
pytrec_eval for retrieval and reranking, scikit-learn for pair classification, and mteb run directly (its own
SentenceTransformer wrapper, no prompts) for every type.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, write
from trainer.eval import EvalRequest, evaluate_models
from trainer.eval.taskfile import TaskFileError, load_task_file

DEMO = ROOT / "recipes" / "eval-demo.yaml"
DATA = ROOT / "recipes" / "data" / "eval"


def _minilm():
    from sentence_transformers import SentenceTransformer

    from trainer.config import resolve_name

    return SentenceTransformer(resolve_name("embedded-minilm")[0], device="cpu")


def _no_instructions(tmp_path: Path) -> Path:
    """The demo task file without instructions (what mteb run directly on MiniLM does: no prompts)."""
    text = "\n".join(line for line in DEMO.read_text().splitlines() if "instruction:" not in line)
    text = text.replace("data/eval", str(DATA))
    return write(tmp_path / "tasks.yaml", f"allow_paths: [{DATA}]\n" + text)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """MiniLM on the demo tasks without instructions, predictions kept."""
    tmp = tmp_path_factory.mktemp("eval")
    tasks = _no_instructions(tmp)
    out = tmp / "results"
    [summary] = evaluate_models(EvalRequest(models=["embedded-minilm"], out=str(out), tasks_file=str(tasks),
                                            save_predictions=True), log=lambda _: None)
    return summary, out, tasks


def _result(out: Path, task: str) -> dict:
    [path] = (out / "results").glob(f"*/*/{task}.json")
    return json.loads(path.read_text())["scores"]["test"][0]


def test_every_task_type_runs_and_writes_mteb_layout_read_by_mteb(demo_run):
    import mteb

    summary, out, _ = demo_run
    assert not [o for o in summary.outcomes if o.error], [o.error for o in summary.outcomes]
    assert {o.type for o in summary.outcomes} == {"STS", "Retrieval", "Reranking", "PairClassification",
                                                   "Classification", "Clustering"}
    loaded = mteb.ResultCache(out).load_results(models=["embedkit/embedded-minilm"])
    [model] = loaded.model_results
    by_task = {t.task_name: t.get_score() for t in model.task_results}
    assert by_task == pytest.approx({o.task: o.value for o in summary.outcomes}, abs=1e-6)
    md = (out / "summary-embedkit__embedded-minilm.md").read_text()
    assert "| mean (tasks) |" in md and "| mean STS |" in md


def test_scores_equal_mteb_run_directly_on_the_same_data(demo_run):
    """Our encoder (dedup, caching, length-sorted batches) changes no number: mteb with its own
    SentenceTransformer wrapper on the same task objects gives the same main scores."""
    import mteb

    from trainer.eval.run import local_tasks, quiet

    summary, _, tasks_file = demo_run
    with quiet():
        tasks = local_tasks(load_task_file(tasks_file))
        direct = mteb.evaluate(_minilm(), tasks, cache=None, show_progress_bar=False, co2_tracker=False)
    theirs = {r.task_name: r.get_score() for r in direct.task_results}
    ours = {o.task: o.value for o in summary.outcomes}
    assert ours.keys() == theirs.keys()
    for task, value in ours.items():  # retrieval: mteb rounds its means to 5 decimals, we keep full precision
        assert round(value, 5) == pytest.approx(round(theirs[task], 5), abs=1e-9), task


def test_sts_spearman_equals_scipy_on_cosine(demo_run):
    from scipy.stats import pearsonr, spearmanr

    _, out, _ = demo_run
    rows = [line.split("\t") for line in (DATA / "sts.tsv").read_text().splitlines()[1:]]
    a = _minilm().encode([r[0] for r in rows], normalize_embeddings=True)
    b = _minilm().encode([r[1] for r in rows], normalize_embeddings=True)
    cos = (a * b).sum(1)
    gold = [float(r[2]) for r in rows]
    got = _result(out, "STS-demo")
    assert got["cosine_spearman"] == pytest.approx(spearmanr(cos, gold).statistic, abs=1e-6)
    assert got["cosine_pearson"] == pytest.approx(pearsonr(cos, gold).statistic, abs=1e-6)


def _qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for line in path.read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        qrels.setdefault(q, {})[d] = int(s)
    return qrels


def test_retrieval_and_reranking_equal_pytrec_eval_on_the_run_file(demo_run):
    import pytrec_eval

    from trainer.eval.trec import read_run

    _, out, _ = demo_run
    [run_path] = (out / "predictions").glob("*/*/Retrieval-demo.default.test.run")
    run = read_run(run_path)
    ev = pytrec_eval.RelevanceEvaluator(_qrels(DATA / "retrieval" / "qrels" / "test.tsv"),
                                        {"ndcg_cut.10", "map_cut.10", "recall.100"})
    per_query = ev.evaluate(run)
    got = _result(out, "Retrieval-demo")
    assert got["ndcg_at_10"] == pytest.approx(np.mean([r["ndcg_cut_10"] for r in per_query.values()]), abs=1e-6)
    assert got["map_at_10"] == pytest.approx(np.mean([r["map_cut_10"] for r in per_query.values()]), abs=1e-6)
    assert got["recall_at_100"] == pytest.approx(np.mean([r["recall_100"] for r in per_query.values()]), abs=1e-6)

    # reranking: MAP over each query's candidates, positives relevant
    [run_path] = (out / "predictions").glob("*/*/Reranking-demo.default.test.run")
    run = read_run(run_path)
    rows = [json.loads(line) for line in (DATA / "rerank.jsonl").read_text().splitlines()]
    st = _minilm()
    maps = []
    for row in rows:  # rank the candidates ourselves, then pytrec_eval's MAP
        docs = row["positive"] + row["negatives"]
        sims = st.encode(docs, normalize_embeddings=True) @ st.encode(row["query"], normalize_embeddings=True)
        qrel = {"q": {f"d{i}": int(i < len(row["positive"])) for i in range(len(docs))}}
        ranking = {"q": {f"d{i}": float(s) for i, s in enumerate(sims)}}
        maps.append(pytrec_eval.RelevanceEvaluator(qrel, {"map"}).evaluate(ranking)["q"]["map"])
    assert len(run) == len(rows)
    assert _result(out, "Reranking-demo")["map_at_1000"] == pytest.approx(np.mean(maps), abs=1e-6)


def test_pair_classification_ap_equals_sklearn(demo_run):
    from sklearn.metrics import average_precision_score

    _, out, _ = demo_run
    rows = [line.split("\t") for line in (DATA / "duplicates.tsv").read_text().splitlines()[1:]]
    st = _minilm()
    cos = (st.encode([r[0] for r in rows], normalize_embeddings=True)
           * st.encode([r[1] for r in rows], normalize_embeddings=True)).sum(1)
    got = _result(out, "Duplicates-demo")
    assert got["cosine_ap"] == pytest.approx(average_precision_score([int(r[2]) for r in rows], cos), abs=1e-6)


def test_each_distinct_text_is_embedded_once_and_a_shared_corpus_once(tmp_path):
    from trainer.eval.encoder import EvalEncoder, load_backend
    from trainer.eval.run import evaluate_tasks, local_tasks

    tasks_file = write(tmp_path / "t.yaml", f"""
        allow_paths: [{DATA}]
        tasks:
          - {{name: R1, type: retrieval, beir: {DATA / 'retrieval'}}}
          - {{name: R2, type: retrieval, beir: {DATA / 'retrieval'}}}
    """)
    encoder = EvalEncoder(load_backend("embedded-minilm"))
    evaluate_tasks(encoder, local_tasks(load_task_file(tasks_file)), None, log=lambda _: None)
    corpus = len((DATA / "retrieval" / "corpus.jsonl").read_text().splitlines())
    queries = len((DATA / "retrieval" / "queries.jsonl").read_text().splitlines())
    assert encoder.stats["embedded"] == corpus + queries  # the second task embedded nothing new
    assert encoder.stats["texts"] == 2 * (corpus + queries)


def test_prompts_follow_the_report_and_are_recorded(tmp_path):
    """Queries get `Instruct: ...\\nQuery: `, documents none, symmetric tasks the instruction on both sides;
    without one the model's saved prompts apply; the results say which prompt was used."""
    from trainer.eval.encoder import Backend, EvalEncoder
    from trainer.eval.run import evaluate_tasks, local_tasks

    seen: list[tuple[str, str]] = []

    def embed(texts, prompt):  # records what the model is asked to embed; a deterministic embedding
        seen.extend((prompt, t) for t in texts)
        rng = [np.random.default_rng(abs(hash(prompt + t)) % 2**32).normal(size=8) for t in texts]
        return np.stack([v / np.linalg.norm(v) for v in rng]).astype(np.float32)

    tasks_file = write(tmp_path / "t.yaml", f"""
        allow_paths: [{DATA}]
        tasks:
          - {{name: R, type: retrieval, beir: {DATA / 'retrieval'}, instruction: Find the answer}}
          - {{name: S, type: sts, path: {DATA / 'sts.tsv'}, instruction: Same meaning}}
          - {{name: S2, type: sts, path: {DATA / 'sts.tsv'}}}
    """)
    backend = Backend(embed, "test/model", "r1", 8, prompts={"STS": "sts: "})
    loaded = load_task_file(tasks_file)
    encoder = EvalEncoder(backend, {t.name: t.instruction for t in loaded.tasks if t.instruction})
    evaluate_tasks(encoder, local_tasks(loaded), tmp_path / "out", log=lambda _: None)
    used = encoder.prompts_used
    assert used["R"]["query"] == {"prompt": "Instruct: Find the answer\nQuery: ", "source": "task"}
    assert used["R"]["document"] == {"prompt": "", "source": "task"}
    assert used["S"]["both"]["prompt"] == "Instruct: Same meaning\nQuery: "
    assert used["S2"]["both"] == {"prompt": "sts: ", "source": "model:STS"}
    assert ("Instruct: Find the answer\nQuery: ", "how long to boil an egg") in seen
    recorded = json.loads(next((tmp_path / "out" / "results").glob("*/*/R.json")).read_text())
    assert recorded["scores"]["test"][0]["embedkit"]["prompts"]["query"]["source"] == "task"


def test_prompts_fit_the_model():
    """--prompts auto: instructions only for a model that declares an instruction template (recorded at export,
    or an `Instruct: ...\\nQuery:` query prompt); else its own saved prompts; else none, with a note."""
    from trainer.eval.encoder import Backend, choose_prompts

    def backend(prompts=None, template=None):
        return Backend(lambda t, p: None, "m", "r", 8, prompts=prompts or {}, query_template=template)

    ins = {"S": "Same meaning"}
    recorded = choose_prompts("auto", backend({"query": "q: "}, "Q {instruction}: "), ins)
    assert (recorded.mode, recorded.template) == ("instruct", "Q {instruction}: ")
    qwen = choose_prompts("auto", backend({"query": "Instruct: Given a web search query, retrieve passages\nQuery:",
                                            "document": ""}), ins)
    assert (qwen.mode, qwen.template) == ("instruct", "Instruct: {instruction}\nQuery:")
    e5 = choose_prompts("auto", backend({"query": "query: ", "document": "passage: "}), ins)
    assert e5.mode == "model" and "1 task instruction(s) not applied" in e5.note
    bare = choose_prompts("auto", backend(), ins)
    assert bare.mode == "none" and "declares no prompt convention" in bare.note and "--prompts instruct" in bare.note
    assert choose_prompts("auto", backend(), {}).note == "no prompts: the model declares no prompt convention"
    forced = choose_prompts("instruct", backend(), ins, "I: {instruction} | ")
    assert (forced.mode, forced.template) == ("instruct", "I: {instruction} | ")
    assert choose_prompts("none", backend({"query": "query: "}, "X {instruction}"), ins).mode == "none"


def test_an_untrained_model_is_scored_without_instructions_unless_asked(demo_run, tmp_path):
    """MiniLM (no prompt convention) on the demo tasks WITH instructions scores exactly as without them, and the
    summary says so; --prompts instruct applies them (another score); a prompts file is used as given."""
    from trainer.eval.encoder import PromptsError

    summary, _, _ = demo_run
    plain = {o.task: o.value for o in summary.outcomes}
    tasks = write(tmp_path / "t.yaml", f"""
        allow_paths: [{DATA}]
        tasks:
          - {{name: STS-demo, type: sts, path: {DATA / 'sts.tsv'}, instruction: Retrieve semantically similar text}}
    """)

    def score(prompts: str, name: str):
        [s] = evaluate_models(EvalRequest(models=["embedded-minilm"], out=str(tmp_path / name), tasks_file=str(tasks),
                                          prompts=prompts), log=lambda _: None)
        return s, _result(tmp_path / name, "STS-demo")

    auto, auto_row = score("auto", "auto")
    assert auto.outcomes[0].value == pytest.approx(plain["STS-demo"], abs=1e-9)
    assert auto_row["embedkit"]["prompts"]["both"] == {"prompt": "", "source": "none"}
    assert "Prompts: no prompts: the model declares no prompt convention; 1 task instruction(s) not applied" \
        in auto.markdown
    forced, forced_row = score("instruct", "instruct")
    assert forced_row["embedkit"]["prompts"]["both"]["prompt"] == "Instruct: Retrieve semantically similar text\nQuery: "
    assert abs(forced.outcomes[0].value - auto.outcomes[0].value) > 1e-4
    prompts_file = write(tmp_path / "p.json", '{"STS": "sentence: "}')
    _, file_row = score(str(prompts_file), "file")
    assert file_row["embedkit"]["prompts"]["both"] == {"prompt": "sentence: ", "source": "file:STS"}
    with pytest.raises(PromptsError, match=r"--prompts no-such\.json: not a mode \(auto, instruct, model, none\)"):
        score("no-such.json", "bad")
    assert not (tmp_path / "bad").exists()  # refused before any model loaded


def test_bad_rows_and_dangling_qrels_are_counted_not_fatal(tmp_path):
    write(tmp_path / "sts.csv", "sentence1,sentence2,score\na cat,a dog,1.5\n,empty,2\nx y,z,not-a-number\n"
                                "one,two,3\nthree,four,4\n")
    beir = tmp_path / "beir"
    write(beir / "corpus.jsonl", '{"_id": "d1", "title": "", "text": "alpha"}\n{"_id": "d2", "text": "beta"}\n'
                                 '{"_id": "d3", "text": ""}\n')
    write(beir / "queries.jsonl", '{"_id": "q1", "text": "alpha?"}\n{"_id": "q2", "text": "beta?"}\n')
    write(beir / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq9\td1\t1\nq1\td7\t1\n")
    tasks_file = write(tmp_path / "t.yaml", """
        tasks:
          - {name: S, type: sts, path: sts.csv}
          - {name: R, type: retrieval, beir: beir}
    """)
    [summary] = evaluate_models(EvalRequest(models=["embedded-minilm"], out=str(tmp_path / "out"),
                                            tasks_file=str(tasks_file)), log=lambda _: None)
    assert not [o.error for o in summary.outcomes if o.error]
    sts = _result(tmp_path / "out", "S")["embedkit"]["data"]
    assert sts["skipped"] == {"empty_text": 1, "bad_score": 1} and sts["rows_read"] == 5
    assert {e["row"] for e in sts["examples"]} == {1, 2}
    ret = _result(tmp_path / "out", "R")["embedkit"]["data"]["skipped"]
    assert ret == {"empty_text": 1, "qrels_missing_query": 1, "qrels_missing_doc": 1}


def test_task_file_errors_name_the_key_and_line(tmp_path):
    bad_type = write(tmp_path / "a.yaml", "tasks:\n  - name: x\n    type: stss\n    path: f.tsv\n")
    with pytest.raises(TaskFileError, match=r"a.yaml:3: tasks\[0\].type"):
        load_task_file(bad_type)
    bad_key = write(tmp_path / "b.yaml", "tasks:\n  - name: x\n    type: sts\n    pth: f.tsv\n")
    with pytest.raises(TaskFileError, match=r"b.yaml:4: tasks\[0\].pth: unknown key 'pth'"):
        load_task_file(bad_key)
    bad_role = write(tmp_path / "c.yaml", "tasks:\n  - name: x\n    type: sts\n    path: f.tsv\n"
                                          "    columns: {text: a}\n")
    with pytest.raises(TaskFileError, match=r"c.yaml:5: tasks\[0\].columns.text: a sts source has no role"):
        load_task_file(bad_role)
    no_train = write(tmp_path / "d.yaml", "tasks:\n  - name: x\n    type: classification\n    path: f.csv\n")
    with pytest.raises(TaskFileError, match="needs `train:`"):
        load_task_file(no_train)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_cli_errors_are_one_line_before_any_model_loads(tmp_path):
    missing_col = write(tmp_path / "t.yaml", f"allow_paths: [{DATA}]\ntasks:\n  - name: x\n    type: sts\n"
                                             f"    path: {DATA / 'sts.tsv'}\n    columns: {{text_a: nope}}\n")
    r = _cli("eval", "embedded-minilm", "--tasks", str(missing_col), "--out", str(tmp_path / "o"))
    assert r.returncode == 2  # a task file naming a column the data lacks: a config error
    assert "t.yaml:6: tasks[0].columns.text_a:" in r.stderr and "no column 'nope'" in r.stderr
    assert "Traceback" not in r.stderr
    r = _cli("eval", str(tmp_path / "no-such-model"), "--tasks", str(DEMO), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no such folder" in r.stderr
    assert not (tmp_path / "o").exists()


def test_compare_marks_deltas_and_writes_md_csv_png(demo_run, tmp_path):
    import shutil

    from trainer.eval.report import compare, write_comparison

    _, out, _ = demo_run
    other = tmp_path / "other"
    shutil.copytree(out / "results", other / "results")
    path = next((other / "results").glob("*/*/STS-demo.json"))
    data = json.loads(path.read_text())
    data["scores"]["test"][0]["main_score"] -= 0.1
    path.write_text(json.dumps(data))
    comp = compare([out, other])
    paths = write_comparison(comp, tmp_path / "cmp")
    md = paths["md"].read_text()
    assert "▼-0.1000" in md and md.count("|") > 20
    assert paths["png"].stat().st_size > 5000 and paths["csv"].read_text().startswith("task,type,metric,")


def test_a_task_reads_its_test_rows_from_a_file_with_a_split_column(tmp_path):
    """SICK's layout: `where:` in a task file scores the TEST rows only; the same file's TRAIN rows never count."""
    from trainer.eval.local import DataReport, read_records

    rows = [("a man sits", "a man is sitting", "4.5", "TRAIN"), ("a dog runs", "a cat sleeps", "1.2", "TEST"),
            ("kids play", "children play", "4.8", "TEST"), ("x", "y", "2", "TRIAL"), ("sun", "moon", "2.5", "TEST")]
    write(tmp_path / "SICK.txt", "sentence_A\tsentence_B\trelatedness_score\tSemEval_set\n"
          + "".join("\t".join(r) + "\n" for r in rows))
    loaded = load_task_file(write(tmp_path / "t.yaml", """
        tasks:
          - name: SICK-R-local
            type: sts
            path: SICK.txt
            format: tsv
            where: {SemEval_set: TEST}
            columns: {text_a: sentence_A, text_b: sentence_B, score: relatedness_score}
    """))
    [spec] = loaded.tasks
    table = read_records(spec, "data", loaded.sandbox, DataReport())
    assert table.column("text_a").to_pylist() == ["a dog runs", "kids play", "sun"]
