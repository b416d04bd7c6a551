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


def _tree(folder: Path) -> dict[str, str]:
    """Every entry below `folder` (links as their target, files as their text): to show nothing changed."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = f"-> {os.readlink(p)}" if p.is_symlink() else (p.read_text() if p.is_file() else "/")
    return out


def test_out_never_writes_into_a_folder_it_did_not_make(tmp_path):
    """`--out .` in a project folder (a README, a build-tools/ folder, a classification/ folder of notes, a
    dangling link): refused, nothing touched. The same for a marked output a user later put a file into."""
    project = tmp_path / "project"
    write(project / "README.md", "# my project\n")
    write(project / "build-tools" / "make.sh", "echo hi\n")
    write(project / "classification" / "notes.txt", "my notes\n")
    os.symlink("nowhere", project / "dangling")
    recipe = _recipe(tmp_path, 5)
    before = _tree(project)
    r = subprocess.run([sys.executable, "-m", "datakit.cli", "build", str(recipe), "--out", ".", "-q"],
                       capture_output=True, text=True, cwd=project, env=os.environ)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "was not written by this tool" in r.stderr and "README.md" in r.stderr and "nothing in it is touched" in r.stderr
    assert _tree(project) == before
    out = tmp_path / "out"  # a folder datakit made, then a user's file in it
    assert _datakit("build", str(recipe), "--out", str(out), "-q").returncode == 0
    write(out / "notes.txt", "mine\n")
    r = _datakit("build", str(recipe), "--out", str(out), "-q", "--force")
    assert r.returncode == 2 and "notes.txt" in r.stderr and "did not write" in r.stderr, r.stderr
    assert (out / "notes.txt").read_text() == "mine\n" and verify(out) == []


def test_out_is_never_the_root_the_home_a_source_or_a_folder_holding_one(tmp_path):
    data = tmp_path / "data"
    write(data / "faq.csv", (DATA / "faq.csv").read_text())
    recipe = write(tmp_path / "r.yaml", "name: r\nsources: [{name: faq, path: data, adapter: qa, "
                                        "columns: {query: question, positive: answer}}]\n")
    home = tmp_path / "home"
    home.mkdir()
    cases = {"/": "file system root", "~": "home folder", str(data): "which faq reads",
             str(tmp_path): "which the recipe reads", str(data / "out"): "a folder faq reads"}
    for out, expected in cases.items():
        r = _datakit("build", str(recipe), "--out", out, "-q", env={"HOME": str(home)})
        assert r.returncode == 2 and expected in r.stderr and "Traceback" not in r.stderr, (out, r.stderr)
    assert not (data / "out").exists() and sorted(p.name for p in data.iterdir()) == ["faq.csv"]


def test_recovery_removes_only_what_datakit_wrote(tmp_path):
    """Leftovers of a killed build go; a user's `build-notes/` folder, the current build and other links stay."""
    out = tmp_path / "out"
    assert _datakit("build", str(_recipe(tmp_path, 5)), "--out", str(out), "-q").returncode == 0
    r = _datakit("build", str(_recipe(tmp_path, 8)), "--out", str(out), "-q", env={"DATAKIT_FAULT": "publish:renamed"})
    assert r.returncode == -9
    stale = [p for p in out.iterdir() if p.name.startswith("build-") and p.name != os.readlink(out / "current")]
    assert len(stale) == 1
    write(out / "build-notes" / "keep.txt", "mine\n")  # named like a build, not made by one
    assert _datakit("build", str(_recipe(tmp_path, 8)), "--out", str(out), "-q").returncode == 0
    assert not stale[0].exists() and (out / "build-notes" / "keep.txt").read_text() == "mine\n"


def test_dedup_in_place_keeps_the_audit_of_its_input(tmp_path):
    """`datakit dedup OUT --out OUT` replaces OUT's build: the decontamination report and the lineage of the
    input stay (the input's manifest travels inline in the new one)."""
    from datakit.card import manifest_chain, overlap

    out = tmp_path / "out"
    assert _datakit("build", str(_recipe(tmp_path, 8)), "--out", str(out), "-q").returncode == 0
    bench = write(tmp_path / "bench" / "STSx.test.tsv", "sentence1\tsentence2\n" +
                  "".join(f"{a}\t{b}\n" for a, b in zip(
                      read_shards(out, "pair").column("text_a").to_pylist()[:3],
                      read_shards(out, "pair").column("text_b").to_pylist()[:3])))
    assert _datakit("bench", "build", "--from-files", str(bench), "--out", str(tmp_path / "pack")).returncode == 0
    r = _datakit("decontaminate", str(out), "--bench", str(tmp_path / "pack"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    audited = (out / "contamination.json").read_text()
    r = _datakit("dedup", str(out), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "contamination.json").read_text() == audited and (out / "dedup.json").exists()
    manifest = read_manifest(out)
    chain = list(manifest_chain(manifest))
    assert [m.recipe.name for m in chain] == ["r8+decontaminate+dedup", "r8+decontaminate", "r8"]
    assert overlap(manifest) and sum(o.records for o in overlap(manifest)) > 0
    assert verify(out, deep=True) == []


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
    assert r.returncode == (2 if fault == "file" else 1) and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("error: ") and ("nothing was written" in r.stderr or fault == "file")
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
