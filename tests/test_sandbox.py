"""A shared recipe (or task file) reads only its own folder and the paths it lists under `allow_paths`: recipe SQL,
`path:` sources, folders, globs and symlinks, checked at `validate` and at `build`; refusals name what they refuse."""
import json
import os

import pytest

from datakit.pipeline import build
from datakit.recipe import load_recipe
from datakit.sources import SourceError
from tests.conftest import run, write

SQL = "name: x\nsources:\n  - name: s\n    adapter: qa\n    sql: |\n      {sql}\n"


@pytest.fixture
def outside(tmp_path):
    """A file beside the recipe's folder (the recipe lives in tmp_path/recipe)."""
    return write(tmp_path / "secret" / "passwd.csv", "question,answer\nroot,x:0:0\n")


@pytest.mark.parametrize("sql, refused", [
    ("SELECT * FROM read_csv('/etc/passwd')", "/etc/passwd"),
    ("SELECT content AS question, content AS answer FROM read_text('../../../../../../etc/hostname')", "etc/hostname"),
    ("SELECT file AS question, file AS answer FROM glob('/*')", "'/*'"),
    ("SELECT * FROM read_csv('../secret/passwd.csv')", "passwd.csv"),
    ("SELECT * FROM '../secret/passwd.csv'", "passwd.csv"),
    ("SELECT * FROM \"../secret/passwd.csv\"", "passwd.csv"),
    ("SELECT * FROM read_csv(concat('/et', 'c/passwd'))", "read_csv(...) must name its files as a string literal"),
    ("SELECT * FROM read_csv('https://example.com/x.csv')", "local files only"),
])
def test_recipe_sql_cannot_read_outside_its_folder(tmp_path, outside, sql, refused):
    recipe = write(tmp_path / "recipe" / "r.yaml", SQL.format(sql=sql))
    res = run("datakit", "validate", str(recipe))
    assert res.returncode == 1 and refused in res.stderr, res.stderr
    res = run("datakit", "build", str(recipe), "--out", str(tmp_path / "out"), "-q")
    assert res.returncode == 1 and refused in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_allow_paths_opens_exactly_what_it_lists(tmp_path, outside):
    write(tmp_path / "recipe" / "qa.csv", "question,answer\nq,a\n")
    body = ("name: x\nallow_paths: [../secret]\nsources:\n"
            "  - {name: a, adapter: qa, sql: \"SELECT * FROM read_csv('../secret/passwd.csv')\"}\n"
            "  - {name: b, adapter: qa, path: ../secret/passwd.csv}\n"
            "  - {name: c, adapter: qa, path: qa.csv}\n")
    result = build(load_recipe(write(tmp_path / "recipe" / "r.yaml", body)), tmp_path / "out")
    assert result.manifest["counts"]["retrieval"] == {"a": 1, "b": 1, "c": 1}
    # listing one file opens that file, not its folder
    write(tmp_path / "secret" / "other.csv", "question,answer\nq,a\n")
    body = ("name: x\nallow_paths: [../secret/passwd.csv]\nsources:\n"
            "  - {name: b, adapter: qa, path: ../secret/other.csv}\n")
    with pytest.raises(SourceError, match=r"other.csv .* is outside the recipe's folder"):
        build(load_recipe(write(tmp_path / "recipe" / "r2.yaml", body)), tmp_path / "out2")


@pytest.mark.parametrize("path", ["../secret/passwd.csv", "{abs}", "../secret/*.csv", "link.csv", "linked/passwd.csv"])
def test_path_sources_cannot_escape(tmp_path, outside, path):
    folder = tmp_path / "recipe"
    folder.mkdir()
    os.symlink(outside, folder / "link.csv")  # a shipped symlink is followed, then checked
    os.symlink(outside.parent, folder / "linked")
    recipe = write(folder / "r.yaml", f"name: x\nsources: [{{name: s, adapter: qa, path: '{path.format(abs=outside)}'}}]\n")
    res = run("datakit", "validate", str(recipe))
    assert res.returncode == 1 and "is outside the recipe's folder" in res.stderr and "allow_paths" in res.stderr


def test_a_folder_source_lists_the_files_it_skips(tmp_path):
    folder = tmp_path / "recipe"
    write(folder / "data" / "a.jsonl", '{"question": "q", "answer": "a"}\n')
    write(folder / "data" / "notes.txt", "not data\n")
    write(folder / "data" / "logo.png", b"\x89PNG\r\n")
    recipe = write(folder / "r.yaml", "name: x\nsources: [{name: s, adapter: qa, path: data}]\n")
    res = run("datakit", "build", str(recipe), "--out", str(tmp_path / "out"), "-q")
    assert res.returncode == 0, res.stderr
    assert "2 file(s) not read" in res.stderr and "notes.txt (no reader for .txt)" in res.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [s["file"] for s in manifest["inputs"]["s"]["skipped"]] == ["data/logo.png", "data/notes.txt"]


def test_refusals_name_the_statement_refused(tmp_path, demo_cli):
    res = run("datakit", "sql", str(demo_cli), "INSTALL httpfs")
    assert res.returncode == 1 and "refused: INSTALL httpfs" in res.stderr
    res = run("datakit", "sql", str(demo_cli), "SELECT 1; ATTACH 'x.db'")
    assert res.returncode == 1 and "refused: ATTACH 'x.db'" in res.stderr


def test_eval_task_files_follow_the_same_rule(tmp_path, outside):
    from trainer.eval.run import local_tasks
    from trainer.eval.taskfile import TaskFileError, load_task_file

    body = ("tasks:\n  - {name: t, type: sts, path: ../secret/passwd.csv, "
            "columns: {text_a: question, text_b: answer, score: question}}\n")
    task_file = load_task_file(write(tmp_path / "tasks" / "t.yaml", body))
    with pytest.raises(TaskFileError, match=r"t.yaml:2: tasks\[0\].name: source 't': path '../secret/passwd.csv': "
                                            ".* is outside the task file's folder"):
        local_tasks(task_file)


@pytest.mark.parametrize("prompt", ["/etc/passwd", "../secret/creds", "../secret/creds.yaml", "{abs}",
                                    "../../../../../../etc/hostname"])
def test_prompt_files_go_through_the_sandbox_before_they_are_opened(tmp_path, prompt):
    """A prompt named without `.yaml` used to be looked up beside the packaged prompts, unchecked: any path read,
    a broken file's content printed. Every prompt that is not a packaged id is a file, checked first."""
    secret = write(tmp_path / "secret" / "creds.yaml", "password: hunter2\nmessages: [broken\n")
    write(tmp_path / "secret" / "creds", "password: hunter2\n")
    write(tmp_path / "recipe" / "qa.csv", "question,answer\nq,a\n")
    recipe = write(tmp_path / "recipe" / "r.yaml", "name: x\nsources: [{name: s, adapter: qa, path: qa.csv}]\n"
                   f"steps: [{{type: paraphrase, prompt: '{prompt.format(abs=secret)}'}}]\n")
    for args in (("validate", str(recipe)), ("build", str(recipe), "--out", str(tmp_path / "out"), "-q")):
        res = run("datakit", *args)
        assert res.returncode == 2 and "steps[0].paraphrase.prompt" in res.stderr, res.stderr
        assert "is outside the recipe's folder" in res.stderr and "hunter2" not in res.stderr + res.stdout
        assert "Traceback" not in res.stderr


def test_every_path_key_of_a_recipe_is_checked(tmp_path, outside):
    """Mining pools, packs, benchmark files, caches (written there) and judge prompts: one resolver, one rule."""
    write(tmp_path / "recipe" / "qa.csv", "question,answer\nq,a\n")
    steps = {"mine_negatives": "extra_pool: ['{o}']", "decontaminate": "packs: ['{d}']",
             "llm_negatives": "judge: true, judge_prompt: '{d}/j.yaml'"}
    for step, keys in steps.items():
        body = (f"name: x\nsources: [{{name: s, adapter: qa, path: qa.csv}}]\n"
                f"steps: [{{type: {step}, {keys.format(o=outside, d=outside.parent)}}}]\n")
        with pytest.raises(Exception, match=rf"steps\[0\]\.{step}\.\w+.*is outside the recipe's folder"):
            load_recipe(write(tmp_path / "recipe" / "r.yaml", body))
    body = f"name: x\nsources: [{{name: s, adapter: qa, path: qa.csv}}]\nllm: {{cache: {outside.parent}/c.sqlite}}\n"
    with pytest.raises(Exception, match=r"llm.cache.*is outside the recipe's folder"):
        load_recipe(write(tmp_path / "recipe" / "r.yaml", body))
    body = "name: x\nsources: [{name: s, adapter: qa, path: qa.csv}]\nsteps: [{type: dedup, report: ../../x.json}]\n"
    with pytest.raises(Exception, match=r"report"):  # a report name is a plain file name inside the output
        load_recipe(write(tmp_path / "recipe" / "r.yaml", body))


@pytest.mark.parametrize("allow", ["/", "~", "..", "."])
def test_wide_allow_paths_are_shown_and_need_the_users_flag(tmp_path, allow):
    write(tmp_path / "recipe" / "qa.csv", "question,answer\nq,a\n")
    recipe = write(tmp_path / "recipe" / "r.yaml",
                   f"name: x\nallow_paths: ['{allow}']\nsources: [{{name: s, adapter: qa, path: qa.csv}}]\n")
    env = {"HOME": str(tmp_path)}
    res = run("datakit", "validate", str(recipe), env=env)
    assert res.returncode == 0 and "wide: more than the recipe's own tree" in " ".join(res.stdout.split()), res.stdout
    res = run("datakit", "build", str(recipe), "--out", str(tmp_path / "out"), "-q", env=env)
    assert res.returncode == 2 and "--allow-wide-paths" in res.stderr and "Traceback" not in res.stderr
    res = run("datakit", "build", str(recipe), "--out", str(tmp_path / "out"), "-q", "--allow-wide-paths", env=env)
    assert res.returncode == 0, res.stderr


def test_a_folder_source_follows_linked_folders_inside_the_sandbox_and_names_the_others(tmp_path, outside):
    folder = tmp_path / "recipe"
    write(folder / "data" / "a.jsonl", '{"question": "q1", "answer": "a1"}\n')
    write(folder / "more" / "b.jsonl", '{"question": "q2", "answer": "a2"}\n')
    os.symlink(folder / "more", folder / "data" / "inside")  # inside the sandbox: read
    os.symlink(outside.parent, folder / "data" / "outside")  # outside: named as skipped, never read
    os.symlink(folder / "data", folder / "data" / "loop")  # a cycle: walked once
    recipe = write(folder / "r.yaml", "name: x\nsources: [{name: s, adapter: qa, path: data}]\n")
    res = run("datakit", "build", str(recipe), "--out", str(tmp_path / "out"), "-q")
    assert res.returncode == 0, res.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["retrieval"]["s"] == 2
    skipped = manifest["inputs"]["s"]["skipped"]
    assert [s["file"] for s in skipped] == ["data/outside"] and "not read" in skipped[0]["reason"]
