"""Output folder integrity: one writer at a time, atomic publishing under kill -9 at every point, and readers
that refuse a folder whose shards disagree with its manifest."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from datakit.manifest import read_manifest, read_shards, verify
from datakit.output import PUBLISH_POINTS, OutputBusy, OutputLock
from tests.conftest import ROOT, write

DATA = ROOT / "recipes" / "data"


def _recipe(tmp: Path, limit: int) -> Path:
    return write(tmp / f"r{limit}.yaml", f"""
        name: r{limit}
        allow_paths: [{DATA}]
        sources:
          - {{name: faq, path: {DATA / 'faq.csv'}, adapter: qa, columns: {{query: question, positive: answer}},
              limit: {limit}}}
          - {{name: sts, path: {DATA / 'sts.csv'}, adapter: sts}}
        steps: [{{type: filter, min_chars: 3}}]
    """)


def _datakit(*args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datakit.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def _faq_rows(out: Path) -> int:
    return read_manifest(out)["counts"]["retrieval"]["faq"]


def test_a_second_writer_fails_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path):
    out = tmp_path / "out"
    with OutputLock(out):
        r = _datakit("build", str(_recipe(tmp_path, 5)), "--out", str(out), "-q")
        assert r.returncode != 0
        assert f"is being written by pid {os.getpid()}" in r.stderr and "Traceback" not in r.stderr
        with pytest.raises(OutputBusy, match="is being written by"):
            OutputLock(out).__enter__()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from datakit.output import OutputLock; "
                               f"lock = OutputLock(__import__('pathlib').Path({str(out)!r})).__enter__(); "
                               "print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert holder.stdout.readline().strip() == "locked"
    assert _datakit("build", str(_recipe(tmp_path, 6)), "--out", str(out), "-q").returncode != 0
    holder.kill()  # kill -9: the kernel drops its lock; the next writer takes the folder over
    holder.wait()
    r = _datakit("build", str(_recipe(tmp_path, 6)), "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    assert verify(out) == []


@pytest.mark.parametrize("point", PUBLISH_POINTS)
def test_kill_at_every_point_of_the_publish_leaves_a_complete_output(tmp_path, point):
    out = tmp_path / "out"
    assert _datakit("build", str(_recipe(tmp_path, 5)), "--out", str(out), "-q").returncode == 0
    assert _faq_rows(out) == 5
    r = _datakit("build", str(_recipe(tmp_path, 8)), "--out", str(out), "-q", env={"DATAKIT_FAULT": f"publish:{point}"})
    assert r.returncode == -9, r.stderr  # killed there
    # the old build or the new one, complete either way: readers see a consistent folder
    assert verify(out) == []
    assert _faq_rows(out) in ((5,) if point in ("staged", "renamed", "linked") else (8,))
    assert read_shards(out, "retrieval").num_rows == sum(read_manifest(out)["counts"]["retrieval"].values())
    # the next writer finishes the job and cleans up what the killed one left
    r = _datakit("build", str(_recipe(tmp_path, 8)), "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    assert _faq_rows(out) == 8 and verify(out) == []
    leftovers = [p.name for p in out.iterdir() if p.name.startswith((".staging-", "build-"))]
    assert leftovers == [os.readlink(out / "current")]


def test_readers_refuse_a_folder_whose_shards_disagree_with_the_manifest(tmp_path):
    out = tmp_path / "out"
    assert _datakit("build", str(_recipe(tmp_path, 8)), "--out", str(out), "-q").returncode == 0
    r = _datakit("verify", str(out))
    assert r.returncode == 0 and "match the manifest" in r.stdout
    shard = next((out / "retrieval").glob("part-*.arrow"))
    data = shard.read_bytes()
    at = data.index(b"password")
    shard.write_bytes(data[:at] + b"Password" + data[at + 8:])  # same size and rows, other text
    r = _datakit("verify", str(out))
    assert r.returncode != 0 and "sha256 differs" in r.stderr
    shard.write_bytes(data[: len(data) // 2])  # truncated
    for args in (("stats", str(out)), ("sql", str(out), "SELECT count(*) FROM retrieval"),
                 ("dedup", str(out), "--out", str(tmp_path / "d"))):
        r = _datakit(*args)
        assert r.returncode != 0 and "do not match the manifest" in r.stderr and "Traceback" not in r.stderr, args
    from trainer.data import open_shards

    with pytest.raises(ValueError, match="the manifest says"):
        open_shards(out)
    shard.unlink()
    with pytest.raises(ValueError, match="in the manifest but missing"):
        open_shards(out)


def test_a_manifest_pointing_outside_its_folder_is_refused_by_every_reader(tmp_path):
    """An edited manifest that points a shard at a valid Arrow file elsewhere: verify, stats, sql and the trainer
    all refuse it with the same error (before, verify and stats passed while sql and the trainer saw 0 rows)."""
    import json as _json

    from trainer.data import open_shards

    out = tmp_path / "out"
    assert _datakit("build", str(_recipe(tmp_path, 5)), "--out", str(out), "-q").returncode == 0
    build = (out / "current").resolve()
    manifest = _json.loads((build / "manifest.json").read_text())
    entry = next(s for s in manifest["shards"] if s["kind"] == "retrieval")
    elsewhere = tmp_path / "elsewhere.arrow"
    shutil.copy(build / entry["file"], elsewhere)
    (build / entry["file"]).unlink()
    entry["file"] = "../../elsewhere.arrow"
    (build / "manifest.json").write_text(_json.dumps(manifest))
    for args in (("verify", str(out)), ("stats", str(out)), ("sql", str(out), "SELECT count(*) FROM retrieval")):
        r = _datakit(*args)
        assert r.returncode == 1 and "points outside the output folder" in r.stderr, args
    with pytest.raises(ValueError, match="points outside the output folder"):
        open_shards(out)


def test_a_kill_during_the_migration_of_an_old_layout_loses_nothing(tmp_path):
    """Killed after the shards moved into the new build folder and before its manifest: the next writer
    resumes the migration instead of removing that folder as a leftover."""
    out = tmp_path / "out"
    assert _datakit("build", str(_recipe(tmp_path, 5)), "--out", str(out), "-q").returncode == 0
    legacy = tmp_path / "legacy"
    shutil.copytree(out / "current", legacy, symlinks=False)
    r = _datakit("build", str(_recipe(tmp_path, 8)), "--out", str(legacy), "-q", env={"DATAKIT_FAULT": "migrate:moved"})
    assert r.returncode == -9
    assert (legacy / "current").is_symlink() and (legacy / "manifest.json").is_file()  # cut half way
    with OutputLock(legacy):  # any writer: resumes the migration, then recovers
        pass
    assert _faq_rows(legacy) == 5 and verify(legacy, deep=True) == []


def test_a_folder_in_the_old_layout_is_read_and_then_migrated(tmp_path):
    out = tmp_path / "out"
    assert _datakit("build", str(_recipe(tmp_path, 5)), "--out", str(out), "-q").returncode == 0
    legacy = tmp_path / "legacy"
    shutil.copytree(out / "current", legacy, symlinks=False)  # shards and manifest directly in the folder
    assert _faq_rows(legacy) == 5 and verify(legacy) == []
    assert _datakit("build", str(_recipe(tmp_path, 8)), "--out", str(legacy), "-q").returncode == 0
    assert (legacy / "current").is_symlink() and _faq_rows(legacy) == 8 and verify(legacy) == []


@pytest.mark.parametrize("fault", ["file", "under_a_file", "write:ENOSPC", "write:EROFS"])
def test_output_folder_faults_are_one_line_and_keep_what_was_published(tmp_path, fault):
    """--out naming a file, a path under a file, a full disk, a read-only disk (the last two injected at the shard
    write: as root a test cannot make a disk full or a folder read-only)."""
    recipe = _recipe(tmp_path, 5)
    out, env = tmp_path / "out", None
    if fault == "file":
        out = write(tmp_path / "a-file", "keep me\n")
    elif fault == "under_a_file":
        out = write(tmp_path / "a-file", "keep me\n") / "sub"
    else:
        assert _datakit("build", str(recipe), "--out", str(out), "-q").returncode == 0
        before = read_manifest(out)
        env = {"DATAKIT_FAULT": fault}
    r = _datakit("build", str(recipe), "--out", str(out), "-q", "--force", env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and "nothing was written" in r.stderr
    expected = {"file": "a file is there, not a folder", "under_a_file": "a part of the path is a file",
                "write:ENOSPC": "no space left on the device", "write:EROFS": "not writable"}[fault]
    assert expected in r.stderr, r.stderr
    if fault.startswith("write:"):
        assert read_manifest(out) == before and verify(out, deep=True) == []  # the previous build, whole
        assert not list(out.glob(".staging-*"))
    else:
        assert (tmp_path / "a-file").read_text() == "keep me\n"


def test_an_unreachable_hub_dataset_is_one_line_in_build_as_in_validate(tmp_path):
    recipe = write(tmp_path / "r.yaml", "name: x\nsources: [{name: s, adapter: qa, hf: {path: no-such-org/no-such-set}}]\n")
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    for args in (("validate", str(recipe)), ("build", str(recipe), "--out", str(tmp_path / "out"), "-q")):
        r = _datakit(*args, env=env)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert "hf:no-such-org/no-such-set split 'train': cannot open:" in r.stderr, r.stderr
