"""A campaign of bad inputs and faults through the real CLI, each with the outcome it got (issue #12).

Every case runs a command on inputs made for it and classifies what happened from the exit code, stderr and
the output folder: `clear error` (non-zero exit, a message, no traceback), `quarantined` (exit 0, rows in
the quarantine with their reasons), `read` (exit 0, the rows read), `reported` (exit 0 with a warning),
`refused` (a non-zero exit that left the previous output as it was). A traceback or a silent exit 0 with
nothing to show is a `DEFECT`.

    python benchmarks/faults_bench.py            # prints the Markdown table for benchmarks/RESULTS.md
"""
from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def run(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, **(env or {})})


def first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith(("Loading", "Writing"))]
    msg = lines[0] if lines else ""
    return msg.replace("|", "/")[:150]


def quarantine(out: Path) -> dict[str, int]:
    m = json.loads((out / "manifest.json").read_text())
    return m["quarantined"]["reasons"]


class Case:
    def __init__(self, name: str, work: Path):
        self.name, self.dir = name, work / re.sub(r"[^A-Za-z0-9]+", "_", name)
        self.dir.mkdir(parents=True)

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.dir / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def recipe(self, sources: str, steps: str = "") -> Path:
        return self.file("recipe.yaml", f"name: t\nsources:\n{sources}" + (f"steps:\n{steps}" if steps else ""))

    def build(self, recipe: Path, env: dict | None = None) -> tuple[subprocess.CompletedProcess, Path]:
        out = self.dir / "out"
        return run("datakit.cli", "build", str(recipe), "--out", str(out), "-q", env=env), out


def classify(r: subprocess.CompletedProcess, out: Path | None = None, expect_quarantine: bool = False) -> str:
    if "Traceback" in r.stderr:
        return "DEFECT: traceback"
    if r.returncode != 0:
        return "clear error"
    if out is not None and (out / "manifest.json").exists():
        q = quarantine(out)
        if q:
            return "quarantined: " + ", ".join(f"{k} {v}" for k, v in q.items())
        return "read" if not expect_quarantine else "DEFECT: nothing quarantined"
    return "ok"


def cases(work: Path) -> list[tuple[str, str, str, str]]:
    rows = []

    def add(name: str, command: str, outcome: str, message: str) -> None:
        rows.append((name, command, outcome, message))
        print(f"  {name}: {outcome}", file=sys.stderr)

    qa = '  - {name: qa, path: %s, adapter: qa}\n'
    # ---- bad rows: quarantined with a reason
    for name, content, fname in [
        ("bad JSON line", '{"question": "q1", "answer": "a1"}\n{"question": "q2", "answer": \n' * 3, "x.jsonl"),
        ("invalid UTF-8 bytes", b'{"question": "q1", "answer": "a1"}\n{"question": "caf\xe9", "answer": "b"}\n'
         b'{"question": "q3", "answer": "a3"}\n', "x.jsonl"),
        ("a number where text is expected", '{"question": "q1", "answer": "a1"}\n{"question": 42, "answer": "b"}\n'
         '{"question": "q3", "answer": "a3"}\n', "x.jsonl"),
        ("CSV row with a missing field", "question,answer\nq1,a1\nonly_one\nq3,a3\nq4,a4\n", "x.csv"),
        ("empty answer", '{"question": "q1", "answer": "a1"}\n{"question": "q2", "answer": "  "}\n'
         '{"question": "q3", "answer": "a3"}\n', "x.jsonl"),
    ]:
        c = Case(name, work)
        r, out = c.build(c.recipe(qa % c.file(fname, content)))
        add(name, "datakit build", classify(r, out, expect_quarantine=True),
            first_line(json.dumps(json.loads((out / "manifest.json").read_text())["quarantined"]["by_dataset"]))
            if r.returncode == 0 else first_line(r.stderr))
    # ---- recipe mistakes: clear errors naming the key and line
    for name, text in [
        ("typo in a recipe key", "name: t\nsources:\n  - {name: qa, path: x.jsonl, adapter: qa, colums: {}}\n"),
        ("unknown adapter", "name: t\nsources:\n  - {name: qa, path: x.jsonl, adapter: qaa}\n"),
        ("YAML tag (code execution attempt)", "name: !!python/object/apply:os.system ['echo hi']\nsources: []\n"),
        ("missing input file", "name: t\nsources:\n  - {name: qa, path: nowhere.jsonl, adapter: qa}\n"),
    ]:
        c = Case(name, work)
        r, _ = c.build(c.file("recipe.yaml", text))
        add(name, "datakit build", classify(r), first_line(r.stderr))
    # ---- mistakes that used to exit 0 with an empty corpus
    c = Case("qa adapter on a list-valued answer column", work)
    r, _ = c.build(c.recipe(qa % c.file("x.jsonl", "".join(json.dumps({"question": f"q{i}", "answer": ["a", "b"]})
                                                          + "\n" for i in range(50)))))
    add(c.name, "datakit build", classify(r), first_line(r.stderr))
    c = Case("missing JSONL column", work)
    r, _ = c.build(c.recipe(qa % c.file("x.jsonl", "".join(json.dumps({"query": f"q{i}", "answer": "a"}) + "\n"
                                                          for i in range(50)))))
    add(c.name, "datakit build", classify(r), first_line(r.stderr))
    c = Case("same mistake, caught by validate", work)
    rec = c.recipe(qa % c.file("x.jsonl", "".join(json.dumps({"query": f"q{i}", "answer": "a"}) + "\n"
                                                  for i in range(50))))
    r = run("datakit.cli", "validate", str(rec))
    add(c.name, "datakit validate", classify(r), first_line(r.stderr))
    c = Case("JSON array in a .json file", work)
    r, out = c.build(c.recipe(qa % c.file("x.json", json.dumps([{"question": f"q{i}", "answer": "a"}
                                                                for i in range(20)]))))
    add(c.name, "datakit build", classify(r, out), f"{json.loads((out / 'manifest.json').read_text())['counts']}")
    c = Case("empty source", work)
    r, _ = c.build(c.recipe(qa % c.file("x.jsonl", "")))
    add(c.name, "datakit build", classify(r), first_line(r.stderr))
    # ---- CSV quoting and truncated input
    c = Case("unbalanced quote swallowing 1,599 of 3,000 rows", work)
    lines = ["question,answer"] + [(f'"q{i}' if i == 1400 else f"q{i}") + f",a{i}" for i in range(3000)]
    r, _ = c.build(c.recipe(qa % c.file("x.csv", "\n".join(lines) + "\n")))
    add(c.name, "datakit build", classify(r), first_line(r.stderr))
    c = Case("unbalanced quote swallowing 99 rows", work)
    lines = ["question,answer"] + [(f'"q{i}' if i == 2900 else f"q{i}") + f",a{i}" for i in range(3000)]
    r, out = c.build(c.recipe(qa % c.file("x.csv", "\n".join(lines) + "\n")))
    lost = json.loads((out / "manifest.json").read_text())["quarantined"].get("lost_rows") if r.returncode == 0 else None
    add(c.name, "datakit build", classify(r, out) + f"; lost_rows {lost}", first_line(r.stderr))
    for fmt in ("jsonl", "csv"):
        c = Case(f"truncated gzip ({fmt})", work)
        text = ("".join(json.dumps({"question": f"q{i}", "answer": f"answer {i} " * 5}) + "\n" for i in range(20000))
                if fmt == "jsonl" else "question,answer\n" + "".join(f"q{i},answer {i}\n" for i in range(60000)))
        data = gzip.compress(text.encode())
        r, out = c.build(c.recipe(qa % c.file(f"x.{fmt}.gz", data[: len(data) // 2])))
        kept = json.loads((out / "manifest.json").read_text())["counts"]["retrieval"]["qa"]
        add(c.name, "datakit build", classify(r) + f"; {kept:,} rows before the break kept", first_line(r.stderr))
    # ---- output folder faults
    c = Case("second writer into the same --out", work)
    rec = c.recipe(qa % c.file("x.jsonl", "".join(json.dumps({"question": f"q{i}", "answer": "a"}) + "\n"
                                                  for i in range(200))))
    holder = subprocess.Popen([PY, "-c", "import time; from pathlib import Path; from datakit.output import OutputLock; "
                               f"lock = OutputLock(Path({str(c.dir / 'out')!r})).__enter__(); print('x', flush=True); "
                               "time.sleep(30)"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    holder.stdout.readline()
    r, _ = c.build(rec)
    holder.kill()
    holder.wait()
    add(c.name, "datakit build (while another holds OUT)", classify(r), first_line(r.stderr))
    for point in ("renamed", "switched"):
        c = Case(f"kill -9 during publish ({point})", work)
        src = c.file("x.jsonl", "".join(json.dumps({"question": f"q{i}", "answer": "a"}) + "\n" for i in range(50)))
        first, out = c.build(c.recipe(qa % src))
        before = json.loads((out / "manifest.json").read_text())["counts"]
        src.write_text("".join(json.dumps({"question": f"q{i}", "answer": "b"}) + "\n" for i in range(80)))
        r, _ = c.build(c.recipe(qa % src), env={"DATAKIT_FAULT": f"publish:{point}"})
        check = run("datakit.cli", "verify", str(out))
        after = json.loads((out / "manifest.json").read_text())["counts"]
        state = "previous build intact" if after == before else "new build complete"
        add(c.name, "datakit build, SIGKILL", f"killed ({r.returncode}); {state}; verify exit {check.returncode}",
            first_line(check.stdout))
    c = Case("shard truncated on disk", work)
    r, out = c.build(c.recipe(qa % c.file("x.jsonl", "".join(json.dumps({"question": f"q{i}", "answer": "a"}) + "\n"
                                                              for i in range(50)))))
    shard = next((out / "retrieval").glob("part-*.arrow"))
    shard.write_bytes(shard.read_bytes()[:200])
    for cmd in (("stats",), ("sql", "SELECT count(*) FROM retrieval")):
        r = run("datakit.cli", cmd[0], str(out), *cmd[1:])
        add(c.name, f"datakit {cmd[0]}", classify(r), first_line(r.stderr))
    # ---- SQL
    c = Case("recipe SQL with COPY ... TO", work)
    r, _ = c.build(c.file("recipe.yaml", 'name: t\nsources:\n  - name: qa\n    sql: "COPY (SELECT 1 AS question, '
                                         "2 AS answer) TO 'leak.csv'\"\n    adapter: qa\n"))
    add(c.name, "datakit build", classify(r) + ("; no file written" if not (c.dir / "leak.csv").exists() else ""),
        first_line(r.stderr))
    c = Case("datakit sql reading another file", work)
    r = run("datakit.cli", "sql", str(work / "JSON_array_in_a_json_file" / "out"),
            "SELECT * FROM read_text('/etc/hostname')")
    add(c.name, "datakit sql", classify(r), first_line(r.stderr))
    # ---- evaluation inputs
    c = Case("eval task file with an unknown type", work)
    r = run("trainer.cli", "eval", "embedded-minilm", "--tasks",
            str(c.file("t.yaml", "tasks:\n  - {name: x, type: stss, path: x.tsv}\n")), "--out", str(c.dir / "o"))
    add(c.name, "trainer eval", classify(r), first_line(r.stderr))
    c = Case("eval model path that does not exist", work)
    r = run("trainer.cli", "eval", str(c.dir / "no-model"), "--tasks", str(ROOT / "recipes" / "eval-demo.yaml"),
            "--out", str(c.dir / "o"))
    add(c.name, "trainer eval", classify(r), first_line(r.stderr))
    c = Case("experiment override path that does not exist", work)
    exp = c.file("e.yaml", f"recipe: {ROOT / 'recipes' / 'demo.yaml'}\ntrain: {ROOT / 'recipes' / 'train-demo.yaml'}\n"
                           f"eval: {ROOT / 'recipes' / 'eval-demo.yaml'}\nvariants:\n  base: {{}}\n"
                           "  x: {recipe: {steps.rerank: null}}\n")
    r = run("trainer.cli", "experiment", str(exp), "--out", str(c.dir / "o"))
    add(c.name, "trainer experiment", classify(r), first_line(r.stderr))
    return rows


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="faults_"))
    t0 = time.time()
    rows = cases(work)
    print(f"\n{len(rows)} cases, {time.time() - t0:.0f} s\n")
    print("| case | command | outcome | message (first line) |\n|---|---|---|---|")
    for name, command, outcome, message in rows:
        print(f"| {name} | {command} | {outcome} | {message} |")
    if any("DEFECT" in r[2] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    main()
