"""`trainer` guarded like `datakit`: typed configs checked before any model loads (file:line, exit 2), YAML errors
in one line, an output-folder lock naming its holder, a resumed run that says so, and the exit-code convention."""
import json

import pytest

from embedkit.folderlock import FolderLock
from tests.conftest import build_yaml, qa_corpus, run, write

GOOD = """\
model: {name_or_path: embedded-minilm}
data: {shards: corpus/out, batch_size: 4, negatives: 0, query_max_length: 32, doc_max_length: 32}
output_dir: run
stages:
  - {steps: 2, lr: 3.0e-5, warmup_steps: 0}
log_every: 1
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return qa_corpus(tmp_path_factory.mktemp("trainer_cli"))


@pytest.mark.parametrize("old, new, where, message", [
    ("log_every: 1", "log_every: 1\ntau: \"0.02\"", "cfg.yaml:7: tau",
     "valid number, got '0.02' (str): write the number without quotes"),
    ("lr: 3.0e-5", "lr: -1.0e-5", "cfg.yaml:5: stages[0].lr", "greater than 0"),
    ("batch_size: 4", "batch_size: 4, eta: 1.5", "cfg.yaml:2: data.eta", "less than or equal to 1"),
    ("log_every: 1", "log_every: 1\ntua: 0.05", "cfg.yaml:7: tua", "unknown key 'tua'"),
    ("steps: 2", "steps: 0", "cfg.yaml:4: stages", "every stage has 0 steps"),
    ("log_every: 1", "log_every: 1\nlog_every: 5", "cfg.yaml:7", "'log_every' is given twice in one mapping"),
])
def test_a_bad_value_is_one_line_naming_file_line_and_key_before_any_model_loads(corpus, old, new, where, message):
    cfg = write(corpus / "cfg.yaml", GOOD.replace(old, new))
    res = run("trainer", "run", str(cfg), "--out", str(corpus / "bad-run"))
    assert res.returncode == 2, res.stderr
    assert where in res.stderr and message in res.stderr
    assert "Traceback" not in res.stderr and not (corpus / "bad-run").exists()  # nothing ran


def test_yaml_syntax_error_names_the_file_and_line(corpus):
    cfg = write(corpus / "broken.yaml", "model: {name_or_path: embedded-minilm}\nstages:\n  - {steps: 2, lr: [\n")
    res = run("trainer", "run", str(cfg))
    assert res.returncode == 2 and "broken.yaml:4" in res.stderr and "not valid YAML" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_shards_and_output_folder_can_come_from_the_command_line(corpus):
    cfg = write(corpus / "bare.yaml", "model: {name_or_path: embedded-minilm}\nstages: [{steps: 1, lr: 1.0e-5}]\n")
    res = run("trainer", "run", str(cfg))
    assert res.returncode == 2 and "data.shards: not set" in res.stderr
    res = run("trainer", "run", str(cfg), "--shards", str(corpus / "corpus" / "out"))
    assert res.returncode == 2 and "output_dir: not set" in res.stderr
    res = run("trainer", "run", str(cfg), "--shards", str(corpus / "nowhere"), "--out", str(corpus / "x"))
    assert res.returncode == 2 and "nowhere: no such folder" in res.stderr


def test_a_second_run_into_a_locked_output_folder_is_refused_naming_the_holder(corpus):
    cfg = write(corpus / "cfg.yaml", GOOD)
    with FolderLock(corpus / "run"):
        res = run("trainer", "run", str(cfg))
    assert res.returncode == 1
    assert "is being written by pid" in res.stderr and "another output folder" in res.stderr
    assert not (corpus / "run" / "log.jsonl").exists()


def test_a_run_says_it_resumed_and_its_log_holds_each_step_once(corpus):
    cfg = write(corpus / "cfg.yaml", GOOD.replace("steps: 2,", "steps: 4,") + "save_every: 2\n")
    res = run("trainer", "run", str(cfg))
    assert res.returncode == 0, res.stderr
    out = corpus / "run"
    (out / "stage1" / "done").unlink()  # as if killed after the checkpoint at step 2
    res = run("trainer", "run", str(cfg))
    assert res.returncode == 0, res.stderr
    assert f"resuming stage 1 at step 2 from {out / 'stage1' / 'state-2'}" in res.stdout + res.stderr
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # the killed run's records after step 2 were replaced, not duplicated
    res = run("trainer", "run", str(cfg), "--restart")
    assert res.returncode == 0 and "resuming" not in res.stdout + res.stderr
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_exit_codes_and_debug(corpus):
    res = run("trainer", "eval", "--out", str(corpus / "e"))
    assert res.returncode == 2 and "give one of --tasks" in res.stderr
    res = run("trainer", "run", "nowhere.yaml")
    assert res.returncode == 2 and "cannot read training config nowhere.yaml" in res.stderr
    res = run("trainer", "inspect", str(corpus))
    assert res.returncode == 1 and "no manifest.json" in res.stderr
    res = run("trainer", "no-such-command")
    assert res.returncode == 2


def test_what_escapes_a_command_is_one_line_with_the_traceback_in_a_log_or_printed_with_debug(capsys, monkeypatch):
    from embedkit.clitools import DEBUG_ENV, guarded

    def bug():
        raise KeyError("boom")

    def disk_full():
        raise OSError(28, "No space left on device", "/data/out/retrieval/part-00003.arrow")

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exc:
        guarded(bug)
    text = capsys.readouterr().err
    assert exc.value.code == 1 and "KeyError: 'boom'" in text and "Traceback" not in text
    log = text.split("traceback in ")[1].split(" ")[0]
    assert "raise KeyError" in open(log).read()
    with pytest.raises(SystemExit) as exc:
        guarded(disk_full)
    text = capsys.readouterr().err
    assert exc.value.code == 1
    assert "/data/out/retrieval/part-00003.arrow: no space left on the device" in text.replace("\n", "")
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(SystemExit) as exc:
        guarded(bug)
    assert exc.value.code == 1 and "Traceback" in capsys.readouterr().err


def test_shards_that_cannot_feed_a_stage_fail_in_one_line_before_the_model_loads(tmp_path):
    """A corpus of pairs only: stage 1 (retrieval) cannot be fed; said at once, with the fix. Stage 1 with
    `steps: 0` is skipped, and the run trains the pairs."""
    write(tmp_path / "corpus" / "sts.csv", "sentence1,sentence2,score\n" + "".join(
        f"a sentence about topic {i},another sentence on topic {i},{i % 5}.5\n" for i in range(12)))
    build_yaml(tmp_path / "corpus", "name: sts\nsources: [{name: sts, path: sts.csv, adapter: sts}]\n")
    cfg = write(tmp_path / "cfg.yaml", GOOD.replace("data: {", "data: {pair_batch_size: 4, "))
    res = run("trainer", "run", str(cfg), cwd=tmp_path)
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "stage 1 trains on retrieval records and the shards have none (they hold pair: 24)" in res.stderr
    assert "give stage 1 `steps: 0`" in res.stderr and "traceback" not in res.stderr.lower()
    assert "Loading weights" not in res.stderr + res.stdout  # refused before the model loaded
    two = write(tmp_path / "two.yaml", GOOD.replace("data: {", "data: {pair_batch_size: 4, ").replace(
        "stages:\n", "stages:\n  - {steps: 0, lr: 3.0e-5, warmup_steps: 0}\n"))
    res = run("trainer", "run", str(two), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    steps = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in steps if "loss" in r] == [(2, 1), (2, 2)]
