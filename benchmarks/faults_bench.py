"""A campaign of bad inputs and faults through the real CLIs, each classified from what was observed.

Every case runs a command on inputs made for it and looks at the exit code, stderr, the output folder and
`datakit verify` on it. Outcomes:

- `clear error`: non-zero exit, a one-line `error:` message, no traceback, and no output published (or the
  previous one intact and verified);
- `quarantined: ...`: exit 0, a verified output, the bad rows in its quarantine with their reasons;
- `read` / `reported: ...`: exit 0, a verified output (with a warning or a listed skip where expected);
- `killed; ...`: a SIGKILL during publish, after which the folder holds the previous build or the new one, whole
  (verified).

Anything else is a `DEFECT` and the script exits 1: a traceback; an exit 0 that published nothing, published a
folder `datakit verify` rejects, or lost rows it should have quarantined; a non-zero exit that left a damaged
folder; a kill that left neither build whole.

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
    return msg.replace("|", "/")[:160]


def manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def verified(out: Path) -> bool:
    return manifest(out) is not None and run("datakit.cli", "verify", str(out)).returncode == 0


def classify(r: subprocess.CompletedProcess, out: Path | None = None, before: dict | None = None,
             expect: str = "") -> str:
    """The outcome from what was observed. `out`: the folder the command writes (None: it writes nothing);
    `before`: its manifest before the command (a failure must leave it as it was); `expect`: `quarantine`
    (exit 0 must have quarantined rows), `warning` (exit 0 must carry a warning), `skipped` (must list skipped
    files)."""
    if "Traceback" in r.stderr:
        return "DEFECT: traceback"
    if r.returncode != 0:
        if not r.stderr.strip().startswith("error:"):
            return f"DEFECT: exit {r.returncode} without an error line"
        if out is not None:
            now = manifest(out)
            if before is not None and (now != before or not verified(out)):
                return "DEFECT: failed and changed the previous output"
            if before is None and now is not None:
                return "DEFECT: failed but published an output"
        return "clear error" + ("; previous output intact (verified)" if before is not None else "")
    if out is None:
        return "ok"
    m = manifest(out)
    if m is None:
        return "DEFECT: exit 0 wrote nothing"
    if not verified(out):
        return "DEFECT: exit 0, output fails verify"
    q = m["quarantined"]["reasons"]
    if expect == "quarantine":
        return ("quarantined: " + ", ".join(f"{k} {v}" for k, v in q.items())) if q else "DEFECT: nothing quarantined"
    if expect == "warning":
        return "reported: " + m["warnings"][0][:90] if m.get("warnings") else "DEFECT: exit 0 without a warning"
    if expect == "skipped":
        skipped = [s["file"] for v in m["inputs"].values() for s in v.get("skipped", [])]
        return f"reported: skipped {', '.join(skipped)}" if skipped else "DEFECT: files skipped silently"
    return "read" + (f" (quarantined {sum(q.values())})" if q else "")


class Case:
    def __init__(self, name: str, work: Path):
        self.name, self.dir = name, work / re.sub(r"[^A-Za-z0-9]+", "_", name)
        self.dir.mkdir(parents=True)

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def recipe(self, sources: str, steps: str = "", extra: str = "") -> Path:
        return self.file("recipe.yaml", f"name: t\n{extra}sources:\n{sources}" + (f"steps:\n{steps}" if steps else ""))

    def build(self, recipe: Path, env: dict | None = None, out: Path | None = None,
              *flags: str) -> tuple[subprocess.CompletedProcess, Path]:
        out = out or self.dir / "out"
        return run("datakit.cli", "build", str(recipe), "--out", str(out), "-q", *flags, env=env), out


def qa_rows(n: int, answer: str = "a") -> str:
    return "".join(json.dumps({"question": f"question {i}", "answer": f"{answer} {i}"}) + "\n" for i in range(n))


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
        add(name, "datakit build", classify(r, out, expect="quarantine"), first_line(r.stderr))
    c = Case("STS scores outside score_range [0, 5]", work)
    sts = c.file("x.tsv", "sentence1\tsentence2\tscore\na\tb\t-3\nc\td\t4.5\ne\tf\t17\n")
    r, out = c.build(c.recipe(f"  - {{name: s, path: {sts}, adapter: sts, max_quarantine: 1.0, "
                              "options: {score_range: [0, 5]}}\n"))
    add(c.name, "datakit build", classify(r, out, expect="quarantine"), first_line(r.stderr))
    # ---- recipe mistakes: clear errors naming the key and line
    for name, text in [
        ("typo in a recipe key", "name: t\nsources:\n  - {name: qa, path: x.jsonl, adapter: qa, colums: {}}\n"),
        ("unknown adapter", "name: t\nsources:\n  - {name: qa, path: x.jsonl, adapter: qaa}\n"),
        ("YAML tag (code execution attempt)", "name: !!python/object/apply:os.system ['echo hi']\nsources: []\n"),
        ("YAML syntax error", "name: t\nsources:\n  - {name: qa, path: [\n"),
        ("a key given twice", "name: t\nname: u\nsources:\n  - {name: qa, path: x.jsonl, adapter: qa}\n"),
        ("missing input file", "name: t\nsources:\n  - {name: qa, path: nowhere.jsonl, adapter: qa}\n"),
    ]:
        c = Case(name, work)
        r, out = c.build(c.file("recipe.yaml", text))
        add(name, "datakit build", classify(r, out), first_line(r.stderr))
    # ---- a shared recipe reading outside its folder
    for name, source in [
        ("recipe SQL reading /etc/passwd", "  - {name: s, adapter: qa, sql: \"SELECT * FROM read_csv('/etc/passwd')\"}\n"),
        ("recipe SQL listing / with glob", "  - {name: s, adapter: qa, sql: \"SELECT file AS question, file AS answer "
                                           "FROM glob('/*')\"}\n"),
        ("recipe SQL with ../ escapes", "  - {name: s, adapter: qa, sql: \"SELECT content AS question, content AS answer"
                                        " FROM read_text('../../../../../../../etc/hostname')\"}\n"),
        ("recipe SQL building a path at run time", "  - {name: s, adapter: qa, sql: \"SELECT * FROM "
                                                   "read_csv(concat('/etc/', 'passwd'))\"}\n"),
        ("path: source outside the recipe's folder", "  - {name: s, adapter: qa, path: /etc/hostname, format: csv}\n"),
    ]:
        c = Case(name, work)
        r = run("datakit.cli", "validate", str(c.recipe(source)))
        add(name, "datakit validate", classify(r), first_line(r.stderr))
        r, out = c.build(c.recipe(source))
        add(name, "datakit build", classify(r, out), first_line(r.stderr))
    c = Case("a symlink in the recipe's folder pointing outside", work)
    os.symlink("/etc/hostname", c.dir / "data.csv")
    r, out = c.build(c.recipe("  - {name: s, adapter: qa, path: data.csv}\n"))
    add(c.name, "datakit build", classify(r, out), first_line(r.stderr))
    c = Case("datakit sql: INSTALL httpfs", work)
    first = Case("a small build to query", work)
    _, small = first.build(first.recipe(qa % first.file("x.jsonl", qa_rows(5))))
    r = run("datakit.cli", "sql", str(small), "INSTALL httpfs")
    add(c.name, "datakit sql", classify(r), first_line(r.stderr))
    c = Case("datakit sql reading another file", work)
    r = run("datakit.cli", "sql", str(small), "SELECT * FROM read_text('/etc/hostname')")
    add(c.name, "datakit sql", classify(r), first_line(r.stderr))
    # ---- mistakes that used to exit 0 with an empty or partial corpus
    c = Case("qa adapter on a list-valued answer column", work)
    r, out = c.build(c.recipe(qa % c.file("x.jsonl", "".join(json.dumps({"question": f"q{i}", "answer": ["a", "b"]})
                                                              + "\n" for i in range(50)))))
    add(c.name, "datakit build", classify(r, out), first_line(r.stderr))
    c = Case("missing JSONL column", work)
    bad_col = c.file("x.jsonl", "".join(json.dumps({"query": f"q{i}", "answer": "a"}) + "\n" for i in range(50)))
    r, out = c.build(c.recipe(qa % bad_col))
    add(c.name, "datakit build", classify(r, out), first_line(r.stderr))
    r = run("datakit.cli", "validate", str(c.recipe(qa % bad_col)))
    add("same mistake, caught by validate", "datakit validate", classify(r), first_line(r.stderr))
    c = Case("TSV header naming a column twice", work)
    tsv = c.file("x.tsv", "sentence1\tsentence2\tscore\tsentence1\na\tb\t3\tc\n")
    r, out = c.build(c.recipe(f"  - {{name: s, adapter: sts, path: {tsv}}}\n"))
    add(c.name, "datakit build", classify(r, out), first_line(r.stderr))
    c = Case("folder source with .txt and .png beside the data", work)
    c.file("data/a.jsonl", qa_rows(5))
    c.file("data/notes.txt", "not data\n")
    c.file("data/logo.png", b"\x89PNG\r\n")
    r, out = c.build(c.recipe("  - {name: qa, path: data, adapter: qa}\n"))
    add(c.name, "datakit build", classify(r, out, expect="skipped"), first_line(r.stderr))
    c = Case("JSON array in a .json file", work)
    r, out = c.build(c.recipe(qa % c.file("x.json", json.dumps([{"question": f"q{i}", "answer": "a"}
                                                                for i in range(20)]))))
    add(c.name, "datakit build", classify(r, out), f"{(manifest(out) or {}).get('counts')}")
    c = Case("empty source", work)
    r, out = c.build(c.recipe(qa % c.file("x.jsonl", "")))
    add(c.name, "datakit build", classify(r, out), first_line(r.stderr))
    c = Case("unreachable hf: dataset (offline)", work)
    r, out = c.build(c.recipe("  - {name: s, adapter: qa, hf: {path: no-such-org/no-such-set}}\n"),
                     env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    add(c.name, "datakit build", classify(r, out), first_line(r.stderr))
    # ---- CSV quoting and truncated input
    c = Case("unbalanced quote swallowing 1,599 of 3,000 rows", work)
    lines = ["question,answer"] + [(f'"q{i}' if i == 1400 else f"q{i}") + f",a{i}" for i in range(3000)]
    r, out = c.build(c.recipe(qa % c.file("x.csv", "\n".join(lines) + "\n")))
    add(c.name, "datakit build", classify(r, out), first_line(r.stderr))
    c = Case("unbalanced quote swallowing 99 rows", work)
    lines = ["question,answer"] + [(f'"q{i}' if i == 2900 else f"q{i}") + f",a{i}" for i in range(3000)]
    r, out = c.build(c.recipe(qa % c.file("x.csv", "\n".join(lines) + "\n")))
    lost = (manifest(out) or {}).get("quarantined", {}).get("lost_rows")
    add(c.name, "datakit build", classify(r, out, expect="quarantine") + f"; lost_rows {lost}", first_line(r.stderr))
    for fmt in ("jsonl", "csv"):
        c = Case(f"truncated gzip ({fmt})", work)
        text = ("".join(json.dumps({"question": f"q{i}", "answer": f"answer {i} " * 5}) + "\n" for i in range(20000))
                if fmt == "jsonl" else "question,answer\n" + "".join(f"q{i},answer {i}\n" for i in range(60000)))
        data = gzip.compress(text.encode())
        r, out = c.build(c.recipe(qa % c.file(f"x.{fmt}.gz", data[: len(data) // 2])))
        m = manifest(out)
        # exit 1 by design (the rest of the file is lost) with the rows before the break published
        ok = r.returncode == 1 and m is not None and verified(out) and m.get("incomplete_inputs") and \
            "Traceback" not in r.stderr
        kept = m["counts"]["retrieval"]["qa"] if m else 0
        add(c.name, "datakit build", (f"clear error; {kept:,} rows before the break published (verified)" if ok
                                      else "DEFECT: " + first_line(r.stderr)), first_line(r.stderr))
    # ---- LLM synthesis that cannot work
    src = '  - {name: qa, path: x.jsonl, adapter: qa}\n'
    for name, llm in [
        ("synthesis with a model that does not exist", "llm: {model: embedded/no-such-model.gguf}\n"),
        ("synthesis with nothing listening at api_base", "llm: {model: hosted_vllm/m, api_base: 'http://127.0.0.1:9/v1'}\n"),
        ("synthesis with no API key", "llm: {model: openai/gpt-4o-mini, api_base: 'http://127.0.0.1:9/v1'}\n"),
    ]:
        c = Case(name, work)
        c.file("x.jsonl", qa_rows(4))
        t0 = time.time()
        r, out = c.build(c.file("recipe.yaml", f"name: t\nsources:\n{src}steps: [{{type: paraphrase}}]\n{llm}"),
                         env={"OPENAI_API_KEY": ""})
        add(name, "datakit build", classify(r, out) + f" in {time.time() - t0:.0f} s", first_line(r.stderr))
    c = Case("synthesis whose every answer is unusable (real model, truncated JSON)", work)
    c.file("x.jsonl", qa_rows(4))
    r, out = c.build(c.file("recipe.yaml", f"name: t\nsources:\n{src}steps: [{{type: augment, max_tokens: 6}}]\n"))
    add(c.name, "datakit build", classify(r, out), first_line(r.stderr))
    # ---- decontamination that takes a whole dataset
    c = Case("decontamination removing 75% of a dataset", work)
    test = [f"sentence number {i} about the weather in a town" for i in range(8)]
    c.file("bench/PairX.test.tsv", "".join(f"{a}\t{b}\t3\n" for a, b in zip(test[::2], test[1::2])))
    r = run("datakit.cli", "bench", "build", "--from-files", str(c.dir / "bench" / "PairX.test.tsv"),
            "--out", str(c.dir / "pack"))
    pairs = c.file("p.tsv", "sentence1\tsentence2\tscore\n" + "".join(
        f"{a}\tanother sentence {i} entirely\t2\n" for i, a in enumerate(test[:3])) + "x y z w\tq r s t\t1\n")
    body = f"  - {{name: sick, path: {pairs}, adapter: sts, options: {{both_orders: false}}}}\n"
    r, out = c.build(c.recipe(body, "  - {type: decontaminate, packs: [pack]}\n"))
    add(c.name, "datakit build", classify(r, out, expect="warning"), first_line(r.stderr))
    before = manifest(out)
    r, _ = c.build(c.recipe(body, "  - {type: decontaminate, packs: [pack], max_drop: 0.5}\n"))
    add(c.name + ", with max_drop: 0.5", "datakit build", classify(r, out, before=before), first_line(r.stderr))
    # ---- output folder faults
    c = Case("second writer into the same --out", work)
    rec = c.recipe(qa % c.file("x.jsonl", qa_rows(200)))
    holder = subprocess.Popen([PY, "-c", "import time; from pathlib import Path; from datakit.output import OutputLock; "
                               f"lock = OutputLock(Path({str(c.dir / 'out')!r})).__enter__(); print('x', flush=True); "
                               "time.sleep(30)"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    holder.stdout.readline()
    r, out = c.build(rec)
    holder.kill()
    holder.wait()
    add(c.name, "datakit build (while another holds OUT)", classify(r, out), first_line(r.stderr))
    c = Case("--out naming a file", work)
    target = c.file("a-file", "keep\n")
    r, _ = c.build(c.recipe(qa % c.file("x.jsonl", qa_rows(5))), None, target)
    add(c.name, "datakit build", classify(r) + ("; the file untouched" if target.read_text() == "keep\n" else
                                                "; DEFECT: file changed"), first_line(r.stderr))
    r, _ = c.build(c.recipe(qa % (c.dir / "x.jsonl")), None, target / "sub")
    add("--out under a file", "datakit build", classify(r), first_line(r.stderr))
    for fault in ("ENOSPC", "EROFS"):
        c = Case(f"disk fault {fault} while writing shards (injected)", work)
        rec = c.recipe(qa % c.file("x.jsonl", qa_rows(20)))
        _, out = c.build(rec)
        before = manifest(out)
        r, _ = c.build(rec, {"DATAKIT_FAULT": f"write:{fault}"}, None, "--force")
        add(c.name, "datakit build", classify(r, out, before=before), first_line(r.stderr))
    for point in ("renamed", "switched"):
        c = Case(f"kill -9 during publish ({point})", work)
        src_file = c.file("x.jsonl", qa_rows(50))
        _, out = c.build(c.recipe(qa % src_file))
        before = manifest(out)
        src_file.write_text(qa_rows(80, "b"))
        r, _ = c.build(c.recipe(qa % src_file), env={"DATAKIT_FAULT": f"publish:{point}"})
        after = manifest(out)
        whole = verified(out)
        if r.returncode != -signal.SIGKILL:
            outcome = f"DEFECT: not killed (exit {r.returncode})"
        elif not whole:
            outcome = "DEFECT: killed, folder fails verify"
        else:
            state = "previous build" if after == before else ("new build" if after["counts"]["retrieval"]["qa"] == 80
                                                             else "DEFECT: neither build")
            outcome = f"killed; {state} whole (verified)"
        add(c.name, "datakit build, SIGKILL", outcome, first_line(run("datakit.cli", "verify", str(out)).stdout))
    c = Case("shard truncated on disk", work)
    _, out = c.build(c.recipe(qa % c.file("x.jsonl", qa_rows(50))))
    shard = next((out / "retrieval").glob("part-*.arrow"))
    shard.write_bytes(shard.read_bytes()[:200])
    for cmd in (("stats",), ("sql", "SELECT count(*) FROM retrieval")):
        r = run("datakit.cli", cmd[0], str(out), *cmd[1:])
        add(c.name, f"datakit {cmd[0]}", classify(r), first_line(r.stderr))
    c = Case("manifest pointing a shard outside the output folder", work)
    _, out = c.build(c.recipe(qa % c.file("x.jsonl", qa_rows(10))))
    build = (out / "current").resolve()
    m = json.loads((build / "manifest.json").read_text())
    entry = next(s for s in m["shards"] if s["kind"] == "retrieval")
    (build / entry["file"]).rename(c.dir / "elsewhere.arrow")
    entry["file"] = "../../elsewhere.arrow"
    (build / "manifest.json").write_text(json.dumps(m))
    for cmd in (("verify",), ("stats",), ("sql", "SELECT count(*) FROM retrieval")):
        r = run("datakit.cli", cmd[0], str(out), *cmd[1:])
        add(c.name, f"datakit {cmd[0]}", classify(r), first_line(r.stderr))
    r = run("trainer.cli", "inspect", str(out))
    add(c.name, "trainer inspect", classify(r), first_line(r.stderr))
    # ---- trainer configs and runs
    corpus = small
    base = (f"model: {{name_or_path: embedded-minilm}}\ndata: {{shards: {corpus}, batch_size: 2, negatives: 0, "
            "query_max_length: 16, doc_max_length: 16}\noutput_dir: run\nstages: [{steps: 2, lr: 1.0e-5}]\n")
    for name, text in [
        ("training config: tau as a string", base + 'tau: "0.02"\n'),
        ("training config: negative learning rate", base.replace("lr: 1.0e-5", "lr: -1.0e-5")),
        ("training config: YAML syntax error", base + "stages: [\n"),
        ("training config: unknown key", base + "tua: 0.05\n"),
    ]:
        c = Case(name, work)
        t0 = time.time()
        r = run("trainer.cli", "run", str(c.file("cfg.yaml", text)))
        add(name, "trainer run", classify(r) + f" (exit {r.returncode}, {time.time() - t0:.0f} s)", first_line(r.stderr))
    c = Case("second trainer run into the same output_dir", work)
    cfg = c.file("cfg.yaml", base.replace("steps: 2", "steps: 30"))
    first_run = subprocess.Popen([PY, "-m", "trainer.cli", "run", str(cfg)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    for _ in range(600):  # until the first run holds the lock
        if (c.dir / "run" / ".lock").exists() and (c.dir / "run" / ".lock").read_text().strip():
            break
        time.sleep(0.1)
    r = run("trainer.cli", "run", str(cfg))
    first_run.wait()
    add(c.name, "trainer run (while another runs)", classify(r) + f"; first run exit {first_run.returncode}",
        first_line(r.stderr))
    c = Case("trainer run resumed after a kill", work)
    cfg = c.file("cfg.yaml", base.replace("steps: 2", "steps: 4") + "save_every: 2\n")
    run("trainer.cli", "run", str(cfg))
    (c.dir / "run" / "stage1" / "done").unlink()
    r = run("trainer.cli", "run", str(cfg))
    said = [ln for ln in (r.stdout + r.stderr).splitlines() if "resuming stage" in ln]
    add(c.name, "trainer run", ("read; says " + said[0].split(" from ")[0] if said and r.returncode == 0
                                else "DEFECT: resumed silently"), said[0][:150] if said else first_line(r.stderr))
    # ---- evaluation and experiment inputs
    c = Case("eval task file with an unknown type", work)
    r = run("trainer.cli", "eval", "embedded-minilm", "--tasks",
            str(c.file("t.yaml", "tasks:\n  - {name: x, type: stss, path: x.tsv}\n")), "--out", str(c.dir / "o"))
    add(c.name, "trainer eval", classify(r), first_line(r.stderr))
    c = Case("eval task file reading outside its folder", work)
    r = run("trainer.cli", "eval", "embedded-minilm", "--tasks",
            str(c.file("t.yaml", "tasks:\n  - {name: x, type: sts, path: /etc/hostname, format: tsv}\n")),
            "--out", str(c.dir / "o"))
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
    defects = [r for r in rows if "DEFECT" in r[2]]
    print(f"\n{len(rows)} cases, {len(defects)} defects, {time.time() - t0:.0f} s\n")
    print("| case | command | outcome | message (first line) |\n|---|---|---|---|")
    for name, command, outcome, message in rows:
        print(f"| {name} | {command} | {outcome} | {message} |")
    if defects:
        sys.exit(1)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    main()
