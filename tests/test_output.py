"""Output folder integrity: one writer at a time, atomic publishing under kill -9 at every point, and readers
that refuse a folder whose shards disagree with its manifest."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from datakit.output import PUBLISH_POINTS, OutputBusy, OutputLock, verify
from datakit.shards import read_manifest, read_shards
from tests.conftest import ROOT, write

DATA = ROOT / "recipes" / "data"


def _recipe(tmp: Path, limit: int) -> Path:
    return write(tmp / f"r{limit}.yaml", f"""
        name: r{limit}
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
    with pytest.raises(ValueError, match="differ from the manifest"):
        open_shards(out)


def test_a_folder_in_the_old_layout_is_read_and_then_migrated(tmp_path):
    out = tmp_path / "out"
    assert _datakit("build", str(_recipe(tmp_path, 5)), "--out", str(out), "-q").returncode == 0
    legacy = tmp_path / "legacy"
    shutil.copytree(out / "current", legacy, symlinks=False)  # shards and manifest directly in the folder
    assert _faq_rows(legacy) == 5 and verify(legacy) == []
    assert _datakit("build", str(_recipe(tmp_path, 8)), "--out", str(legacy), "-q").returncode == 0
    assert (legacy / "current").is_symlink() and _faq_rows(legacy) == 8 and verify(legacy) == []
