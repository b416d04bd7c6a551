"""Issue #41: the project never reports success for work it did not do, and one bad row costs one row.

False success (a model without its tokenizer scored, an LLM step whose every answer was empty, a resume that
silently mixes two configs, hand-edited manifest counts, an interrupted eval), a run dying for one row or one
file, a full disk during a checkpoint, and labels whose spelling changed their class."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from datakit.manifest import read_manifest, read_shards
from tests.conftest import BIN, FakeTransport, ROOT, build_yaml, qa_corpus, run, write

TRAIN = """\
model: {name_or_path: embedded-minilm}
data: {shards: corpus/out, batch_size: 4, negatives: 0, query_max_length: 32, doc_max_length: 32}
output_dir: run
stages:
  - {steps: 4, lr: 3.0e-5, warmup_steps: 0}
log_every: 1
save_every: 2
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return qa_corpus(tmp_path_factory.mktemp("no_harm"))


def test_resume_refuses_a_config_whose_training_values_changed(corpus):
    cfg = write(corpus / "cfg.yaml", TRAIN)
    assert run("trainer", "run", str(cfg)).returncode == 0
    (corpus / "run" / "stage1" / "done").unlink()  # as if killed after the checkpoint at step 2
    changed = write(corpus / "cfg.yaml", TRAIN.replace("lr: 3.0e-5", "lr: 1.0e-4").replace("batch_size: 4",
                                                                                           "batch_size: 6"))
    res = run("trainer", "run", str(changed))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "data.batch_size (4 -> 6)" in res.stderr and "stages.0.lr (3e-05 -> 0.0001)" in res.stderr
    assert "--restart" in res.stderr
    res = run("trainer", "run", str(changed), "--restart")
    assert res.returncode == 0, res.stderr
    saved = json.loads((corpus / "run" / "run_config.json").read_text())
    assert saved["stages.0.lr"] == 1e-4 and saved["data.batch_size"] == 6
    # what only logs differently may change on resume
    (corpus / "run" / "stage1" / "done").unlink()
    res = run("trainer", "run", str(write(corpus / "cfg.yaml", changed.read_text().replace("log_every: 1",
                                                                                         "log_every: 2"))))
    assert res.returncode == 0 and "resuming stage 1" in res.stdout + res.stderr, res.stderr


def test_a_run_folder_holding_other_files_is_refused(corpus):
    folder = corpus / "project"
    write(folder / "README.md", "# mine\n")
    res = run("trainer", "run", str(write(corpus / "cfg.yaml", TRAIN)), "--out", str(folder))
    assert res.returncode == 2 and "README.md" in res.stderr and "not written by this tool" in res.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["README.md"]


def _minilm_copy(dest: Path, drop: tuple[str, ...] = (), vocab: str | None = None) -> Path:
    from trainer.config import resolve_name

    shutil.copytree(resolve_name("embedded-minilm")[0], dest)
    for name in drop:
        (dest / name).unlink()
    if vocab is not None:  # a tokenizer that does not belong to the model: a tiny vocabulary
        (dest / "tokenizer.json").unlink()
        (dest / "vocab.txt").write_text(vocab)
    return dest


@pytest.mark.parametrize("case", ["no tokenizer files", "a foreign vocabulary"])
def test_eval_refuses_a_model_whose_tokenizer_is_missing_or_wrong(tmp_path, case):
    if case == "no tokenizer files":
        model = _minilm_copy(tmp_path / "m", drop=("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                                                   "special_tokens_map.json"))
    else:
        model = _minilm_copy(tmp_path / "m", vocab="[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n")
    tasks = ROOT / "recipes" / "walkthrough" / "tasks.yaml"
    res = run("trainer", "eval", str(model), "--tasks", str(tasks), "--out", str(tmp_path / "eval"))
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    expected = "holds no tokenizer files" if case == "no tokenizer files" else "of the tokens of plain text to '[UNK]'"
    assert expected in res.stderr, res.stderr
    assert not list((tmp_path / "eval").rglob("Pairs-test.json"))  # nothing scored


def test_an_interrupted_eval_marks_its_folder_incomplete(tmp_path):
    from trainer.eval.report import compare
    from trainer.eval.status import read_status

    tasks = ROOT / "recipes" / "walkthrough" / "tasks.yaml"
    out = tmp_path / "eval"
    proc = subprocess.Popen([str(BIN / "trainer"), "eval", "embedded-minilm", "--tasks", str(tasks), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "DATAKIT_CACHE": os.environ["DATAKIT_CACHE"]})
    for _ in range(600):  # until the eval has started writing
        if read_status(out)[0] == "running":
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = proc.communicate(timeout=120)
    state, why = read_status(out)
    if proc.returncode == 0:  # the eval finished before the signal landed: nothing to check but completeness
        assert state == "complete"
        return
    assert proc.returncode == 130 and state == "incomplete" and "interrupted" in why, (proc.returncode, err)
    assert "are incomplete" in " ".join(err.split())
    # a killed eval (no chance to write) reads as incomplete too: its pid no longer runs
    doc = json.loads((out / "eval-status.json").read_text())
    (out / "eval-status.json").write_text(json.dumps({**doc, "state": "running", "pid": 2**22 - 1}))
    assert read_status(out)[0] == "incomplete"
    if list(out.rglob("Pairs-test.json")):
        assert all("INCOMPLETE" in c for c in compare([out]).columns)


def test_verify_checks_the_manifests_counts_against_the_shards(tmp_path):
    write(tmp_path / "qa.jsonl", "".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) + "\n" for i in range(5)))
    res = build_yaml(tmp_path, "name: x\nsources: [{name: qa, path: qa.jsonl, adapter: qa}]\n")
    assert run("datakit", "verify", str(res.out_dir)).returncode == 0
    path = res.out_dir / "current" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["counts"]["retrieval"]["qa"] += 100  # hand-edited
    path.write_text(json.dumps(manifest))
    res2 = run("datakit", "verify", str(res.out_dir))
    assert res2.returncode == 1 and "counts.retrieval: 105 records, its shards hold 5" in res2.stdout + res2.stderr


def test_an_llm_step_whose_every_answer_is_empty_fails(tmp_path):
    """A server that answers every request with empty content (a fault a real model cannot be made to show:
    the scripted transport of conftest, named so): the answers count against max_failed and the step fails."""
    from datakit.llm.cache import LLMCache
    from datakit.llm.client import Budget, LLMClient
    from datakit.records import LINEAGE
    from datakit.sources import Sandbox
    from datakit.steps import StepContext, StepFailed, make_step, step_config

    ctx = StepContext(sandbox=Sandbox.of(tmp_path), out_dir=tmp_path, work_dir=tmp_path / "w",
                      artifacts_dir=tmp_path / "a", budget=Budget())
    step = make_step(step_config({"type": "paraphrase", "fields": ["query"]}), ctx)
    step._client = LLMClient("openai/x", LLMCache(tmp_path / "c.db"), transport=FakeTransport([""] * 4),
                             concurrency=1)
    table = pa.table({
        "id": [f"t:{i}" for i in range(4)], "dataset": ["t"] * 4, "instruction": [""] * 4,
        "query": [f"how do I reset my password number {i}" for i in range(4)], "positive": ["Open settings."] * 4,
        "negatives": pa.array([[]] * 4, pa.list_(pa.string())),
        "negative_origins": pa.array([[]] * 4, pa.list_(pa.string())),
        "lineage": pa.array([{"source": "t", "file": "f", "row": i, "parent_id": "", "events": []} for i in range(4)],
                            LINEAGE)})
    list(step.run(iter([("retrieval", table)])))
    with pytest.raises(StepFailed, match=r"4 of 4 requests to \S+ failed: bad_output x4: 4 empty answer"):
        step.check("step 0:paraphrase")


def test_retries_are_ours_and_counted(tmp_path):
    """The provider SDK's own retries are off (max_retries=0 on every request), so each retry is counted."""
    import httpx
    import litellm

    from datakit.llm.cache import LLMCache
    from datakit.llm.client import LLMClient

    resp = httpx.Response(503, request=httpx.Request("POST", "http://x"))
    busy = litellm.ServiceUnavailableError("busy", llm_provider="openai", model="m", response=resp)
    transport = FakeTransport([busy, "fine"])
    seen = []

    async def spy(**kw):
        seen.append(kw.get("max_retries"))
        return await transport(**kw)

    client = LLMClient("openai/m", LLMCache(tmp_path / "c.db"), transport=spy, backoff=0.01)
    [answer] = client.complete_many([{"messages": [{"role": "user", "content": "x"}]}])
    assert answer.text == "fine" and client.stats.calls == 2 and client.stats.retries == 1 and seen == [0, 0]


def test_one_bad_row_or_file_costs_that_row_or_file(tmp_path):
    """A JSONL row with an escaped lone surrogate is one quarantined row; a 0-byte CSV in a glob is named as skipped;
    a file no reader can parse is named in a one-line error."""
    write(tmp_path / "data" / "x.jsonl", '{"text": "good one", "label": "a"}\n{"text": "bad \\ud800 here", "label": "b"}\n'
          '{"text": "good two", "label": "a"}\n{"text": "good three", "label": "b"}\n')
    write(tmp_path / "data" / "empty.csv", "")
    write(tmp_path / "data" / "y.csv", "text,label\nhello there,a\nworld here,b\n")
    recipe = write(tmp_path / "r.yaml", "name: x\nsources:\n  - {name: j, path: data/x.jsonl, adapter: classification}\n"
                   "  - {name: c, path: 'data/*.csv', adapter: classification}\n")
    res = run("datakit", "build", str(recipe), "--out", str(tmp_path / "out"), "-q")
    assert res.returncode == 0, res.stderr
    m = read_manifest(tmp_path / "out")
    assert m["counts"]["classification"] == {"c": 2, "j": 3}
    q = read_shards(tmp_path / "out", "quarantine").to_pylist()
    assert [(r["row"], r["field"], r["reason"]) for r in q] == [(1, "text", "bad_utf8")] and "U+D800" in q[0]["detail"]
    assert m["inputs"]["c"]["skipped"] == [{"file": "data/empty.csv", "reason": "empty file (0 bytes)"}]
    write(tmp_path / "data" / "z.parquet", b"PAR1 not really parquet")
    recipe = write(tmp_path / "r2.yaml", "name: x\nsources: [{name: p, path: 'data/*.parquet', adapter: classification}]\n")
    res = run("datakit", "build", str(recipe), "--out", str(tmp_path / "out2"), "-q")
    assert res.returncode == 1 and "data/z.parquet: cannot be read as parquet" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_a_label_has_one_spelling_per_class(tmp_path):
    """1, "1", 1.0 and "1.0" are one class in JSON and CSV alike; 2.5 is not a class (bad_label)."""
    rows = [{"text": "one as int", "label": 1}, {"text": "one as text", "label": "1"},
            {"text": "one as float", "label": 1.0}, {"text": "two", "label": 2}, {"text": "half", "label": 2.5},
            {"text": "one as float text", "label": "1.0"}]
    write(tmp_path / "a.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write(tmp_path / "b.csv", "text,label\nfirst,1\nsecond,1.0\nthird,2.5\nfourth,02\n")
    res = build_yaml(tmp_path, "name: x\nsources:\n  - {name: a, path: a.jsonl, adapter: classification}\n"
                     "  - {name: b, path: b.csv, adapter: classification}\n")
    table = read_shards(res.out_dir, "classification")
    labels = dict(zip(table.column("text").to_pylist(), table.column("label").to_pylist()))
    assert labels == {"one as int": "1", "one as text": "1", "one as float": "1", "two": "2",
                      "one as float text": "1", "first": "1", "second": "1", "fourth": "2"}
    bad = read_shards(res.out_dir, "quarantine").to_pylist()
    assert sorted((r["file"], r["reason"]) for r in bad) == [("a.jsonl", "bad_label"), ("b.csv", "bad_label")]


def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_partial_file(corpus):
    """Injected (EMBEDKIT_FAULT=save:ENOSPC: as root a test cannot fill a disk): torch's cryptic
    `unexpected pos` becomes one line naming the file; no .tmp file is left."""
    cfg = write(corpus / "cfg.yaml", TRAIN.replace("save_every: 2", "save_every: 0"))
    res = run("trainer", "run", str(cfg), "--out", str(corpus / "full"), env={"EMBEDKIT_FAULT": "save:ENOSPC"})
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "no space left on the device" in res.stderr and "model.pt" in res.stderr
    assert not list((corpus / "full").rglob("*.tmp"))


def test_readers_never_see_a_half_published_output(tmp_path):
    """`datakit sql` while another process republishes the same folder again and again: every query answers."""
    write(tmp_path / "qa.jsonl", "".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) + "\n" for i in range(50)))
    recipe = write(tmp_path / "r.yaml", "name: x\nsources: [{name: qa, path: qa.jsonl, adapter: qa}]\n")
    out = tmp_path / "out"
    assert run("datakit", "build", str(recipe), "--out", str(out), "-q").returncode == 0
    loop = subprocess.Popen([sys.executable, "-c", (
        "import sys; from datakit.pipeline import build; from datakit.recipe import load_recipe\n"
        f"for _ in range(20): build(load_recipe({str(recipe)!r}), {str(out)!r}, force=True)")], cwd=ROOT)
    try:
        answered = 0
        while loop.poll() is None:
            res = run("datakit", "sql", str(out), "SELECT count(*) AS n FROM retrieval", "--json")
            assert res.returncode == 0, res.stderr
            assert json.loads(res.stdout.splitlines()[0])["n"] == 50
            answered += 1
    finally:
        loop.wait()
    assert loop.returncode == 0 and answered >= 1


@pytest.mark.parametrize("setting, message", [
    ("padding_side: left", "model.padding_side: left padding moves every token"),
    ("pad_token: '<no-such-token>'", "model.pad_token: '<no-such-token>' is not in the vocabulary"),
])
def test_a_config_the_model_cannot_run_fails_before_training_naming_the_key(corpus, setting, message):
    cfg = write(corpus / "cfg.yaml", TRAIN.replace("{name_or_path: embedded-minilm}",
                                                   f"{{name_or_path: embedded-minilm, {setting}}}"))
    res = run("trainer", "run", str(cfg), "--out", str(corpus / "unfit"))
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (corpus / "unfit" / "stage1").exists()


def test_trainer_run_prints_scores_before_and_after_and_warns_when_worse(corpus):
    """With an `eval:` section the run ends with the held-out scores before and after training, side by side, and
    a plain warning for a task training made worse (issue #42.4)."""
    from trainer.eval.training import TrainingEval

    tasks = ROOT / "recipes" / "walkthrough" / "tasks.yaml"
    cfg = write(corpus / "cfg.yaml", TRAIN + f"eval: {{tasks: {tasks}}}\n")
    res = run("trainer", "run", str(cfg), "--out", str(corpus / "with-eval"))
    assert res.returncode == 0, res.stderr
    text = res.stdout + res.stderr
    assert "held-out scores before and after training:" in text and "Pairs-test" in text
    evaluator = TrainingEval.__new__(TrainingEval)  # the comparison alone, on a made-up history
    evaluator.history = [("before training", {"STSB": 0.8203, "B77": 0.8042}),
                         ("stage 2 step 160", {"STSB": 0.7986, "B77": 0.8100})]
    table, worse = evaluator.before_after()
    assert "STSB" in table and "-0.0217" in table and "+0.0058" in table
    assert worse == ["STSB 0.8203 -> 0.7986: worse than the model you started from"]
