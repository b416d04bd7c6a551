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
        shown = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith(("Loading", "Writing"))]
        if not (shown and shown[0].startswith("error:")):  # (a model's loading bar may come first)
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
    harm_cases(work, add)
    return rows


class StrangerServer:
    """An OpenAI-compatible endpoint a shared recipe points at (a real HTTP server on a loopback port): it records
    every Authorization header it receives and answers each request with `answer` (or `status`)."""

    def __init__(self, answer: str = "POISON", status: int = 200, fail_first: int = 0):
        import http.server
        import threading

        self.headers: list[str] = []
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.headers.append(self.headers.get("Authorization", ""))
                server.requests += 1
                code = 503 if server.requests <= fail_first else status
                body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": answer}}],
                                   "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})
                if code != 200:
                    body = json.dumps({"error": {"message": "refused", "type": "x", "code": code}})
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): (f"-> {os.readlink(p)}" if p.is_symlink() else
                                        p.read_text() if p.is_file() else "/") for p in sorted(folder.rglob("*"))}


def harm_cases(work: Path, add) -> None:
    """Issue #41's campaign: what a new user or a stranger's shared recipe could do to the user."""
    qa = '  - {name: qa, path: %s, adapter: qa}\n'
    # ---- output folders
    c = Case("--out . in a project folder (README, build-tools/, classification/ notes, a dangling link)", work)
    project = c.dir / "project"
    for name, text in (("README.md", "# mine\n"), ("build-tools/make.sh", "echo\n"), ("classification/notes.txt", "n\n")):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    os.symlink("nowhere", project / "dangling")
    before = tree(project)
    rec = c.recipe(qa % c.file("x.jsonl", qa_rows(5)))
    r = subprocess.run([PY, "-m", "datakit.cli", "build", str(rec), "--out", ".", "-q"], capture_output=True,
                       text=True, cwd=project, env=os.environ)
    add(c.name, "datakit build", classify(r) + ("; folder untouched" if tree(project) == before else
                                                "; DEFECT: files changed"), first_line(r.stderr))
    for name, out in (("--out /", Path("/")), ("--out equal to the source folder", c.dir)):
        r, _ = c.build(rec, None, out)
        add(name, "datakit build", classify(r) + f" (exit {r.returncode})", first_line(r.stderr))
    c = Case("datakit dedup OUT --out OUT after decontaminate (audit files kept)", work)
    rows = c.file("p.tsv", "sentence1\tsentence2\tscore\n" + "".join(f"sentence {i} about a town\tanother one {i}\t3\n"
                                                                    for i in range(10)))
    c.file("bench/PairX.test.tsv", "sentence 1 about a town\tanother one 1\t3\n")
    run("datakit.cli", "bench", "build", "--from-files", str(c.dir / "bench" / "PairX.test.tsv"), "--out", str(c.dir / "pack"))
    _, out = c.build(c.recipe(f"  - {{name: s, path: {rows}, adapter: sts}}\n"))
    run("datakit.cli", "decontaminate", str(out), "--bench", str(c.dir / "pack"), "--out", str(out))
    r = run("datakit.cli", "dedup", str(out), "--out", str(out))
    kept = (out / "contamination.json").exists() and "contamination" in json.dumps(manifest(out).get("parent", {}))
    add(c.name, "datakit dedup", (classify(r, out) + "; contamination.json and lineage kept") if kept and
        r.returncode == 0 else "DEFECT: the input's audit was lost", first_line(r.stderr))
    # ---- credentials and the answer cache
    stranger = StrangerServer(status=401)
    c = Case("a recipe's api_base with OPENAI_API_KEY in the environment", work)
    c.file("x.jsonl", qa_rows(3))
    src = '  - {name: qa, path: x.jsonl, adapter: qa}\n'
    rec = c.file("recipe.yaml", f"name: t\nsources:\n{src}steps: [{{type: paraphrase}}]\n"
                                f"llm: {{model: openai/gpt-4o-mini, api_base: '{stranger.base}', max_retries: 0}}\n")
    r, out = c.build(rec, env={"OPENAI_API_KEY": "sk-user-secret-123456"})
    leaked = any("sk-user-secret" in h for h in stranger.headers)
    add(c.name, "datakit build", ("DEFECT: the key reached the recipe's server" if leaked else
                                  classify(r, out) + f"; server saw {sorted(set(stranger.headers))}"),
        first_line(r.stderr))
    stranger.close()
    poison, honest = StrangerServer("POISON answer from a stranger"), StrangerServer("a paraphrase of the question")
    c = Case("a stranger's recipe fills the shared answer cache, then the user builds", work)
    c.file("x.jsonl", qa_rows(3))
    cache = c.dir / "answers.sqlite"
    for i, server in enumerate((poison, honest)):
        c.file(f"r{i}.yaml", f"name: t\nsources:\n{src}steps: [{{type: paraphrase, max_failed: 1.0}}]\n"
                             f"llm: {{model: openai/m, api_base: '{server.base}', cache: {cache}, preflight: false}}\n")
    run("datakit.cli", "build", str(c.dir / "r0.yaml"), "--out", str(c.dir / "o0"), "-q",
        env={"OPENAI_API_KEY": "x", "DATAKIT_ALLOW_API_BASE": poison.base})
    r = run("datakit.cli", "build", str(c.dir / "r1.yaml"), "--out", str(c.dir / "o1"), "-q",
            env={"OPENAI_API_KEY": "x", "DATAKIT_ALLOW_API_BASE": honest.base})
    syn = (manifest(c.dir / "o1") or {}).get("synthesis", {}).get("paraphrase", {})
    texts = " ".join(json.dumps(e) for e in syn.get("examples", []))
    add(c.name, "datakit build", (f"read; {syn.get('calls')} calls to the user's server, {syn.get('cache_hits')} "
                                  "cached, no poisoned answer" if syn.get("calls") and "POISON" not in texts
                                  else "DEFECT: poisoned answers reused"), first_line(r.stderr))
    poison.close()
    honest.close()
    empty = StrangerServer("")
    c = Case("an LLM server answering every request with empty content", work)
    c.file("x.jsonl", qa_rows(4))
    r, out = c.build(c.file("recipe.yaml", f"name: t\nsources:\n{src}steps: [{{type: paraphrase}}]\n"
                                           f"llm: {{model: openai/m, api_base: '{empty.base}', preflight: false}}\n"),
                     env={"OPENAI_API_KEY": "x", "DATAKIT_ALLOW_API_BASE": empty.base})
    add(c.name, "datakit build", classify(r, out), first_line(r.stderr))
    empty.close()
    flaky = StrangerServer("a paraphrase of it", fail_first=2)
    c = Case("an LLM server failing twice with 503 (retries counted)", work)
    c.file("x.jsonl", qa_rows(1))
    r, out = c.build(c.file("recipe.yaml", f"name: t\nsources:\n{src}steps: [{{type: paraphrase, max_failed: 1.0}}]\n"
                                           f"llm: {{model: openai/m, api_base: '{flaky.base}', preflight: false}}\n"),
                     env={"OPENAI_API_KEY": "x", "DATAKIT_ALLOW_API_BASE": flaky.base})
    syn = (manifest(out) or {}).get("synthesis", {}).get("paraphrase", {})
    add(c.name, "datakit build", (f"read; calls {syn.get('calls')} = requests the server saw {flaky.requests}, "
                                  f"retries {syn.get('retries')}") if syn.get("calls") == flaky.requests
        else f"DEFECT: calls {syn.get('calls')}, server saw {flaky.requests}", first_line(r.stderr))
    flaky.close()
    # ---- paths a recipe names
    secret = work / "secret-outside.yaml"
    secret.write_text("password: hunter2\nmessages: [broken\n")
    for name, prompt in (("prompt: /etc/passwd", "/etc/passwd"), ("prompt: ../ chain without .yaml", "../../../etc/hostname"),
                         ("prompt: a broken YAML file outside the folder", str(secret))):
        c = Case(name, work)
        c.file("x.jsonl", qa_rows(2))
        r = run("datakit.cli", "validate", str(c.file("recipe.yaml", f"name: t\nsources:\n{src}"
                                                                      f"steps: [{{type: paraphrase, prompt: '{prompt}'}}]\n")))
        add(name, "datakit validate", ("DEFECT: printed the outside file" if "hunter2" in r.stderr + r.stdout
                                       else classify(r) + f" (exit {r.returncode})"), first_line(r.stderr))
    for allow, label in (("/", "root"), ("~", "home"), ("..", "parent")):
        c = Case(f"allow_paths: ['{allow}'] ({label})", work)
        c.file("x.jsonl", qa_rows(2))
        rec = c.file("recipe.yaml", f"name: t\nallow_paths: ['{allow}']\nsources:\n{src}")
        shown = "wide" in run("datakit.cli", "validate", str(rec)).stdout
        r, out = c.build(rec)
        add(c.name, "datakit validate + build", classify(r, out) + ("; validate shows it" if shown else
                                                                    "; DEFECT: validate silent"), first_line(r.stderr))
    # ---- false success
    c = Case("hand-edited manifest counts", work)
    _, out = c.build(c.recipe(qa % c.file("x.jsonl", qa_rows(5))))
    m_path = out / "current" / "manifest.json"
    m = json.loads(m_path.read_text())
    m["counts"]["retrieval"]["qa"] = 500
    m_path.write_text(json.dumps(m))
    r = run("datakit.cli", "verify", str(out))
    add(c.name, "datakit verify", classify(r), first_line(r.stderr or r.stdout))
    from trainer.config import resolve_name

    c = Case("trainer eval of a model folder without its tokenizer", work)
    import shutil

    model = c.dir / "model"
    shutil.copytree(resolve_name("embedded-minilm")[0], model)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (model / name).unlink()
    r = run("trainer.cli", "eval", str(model), "--tasks", str(ROOT / "recipes" / "walkthrough" / "tasks.yaml"),
            "--out", str(c.dir / "eval"))
    add(c.name, "trainer eval", classify(r), first_line(r.stderr))
    c = Case("Ctrl-C during trainer eval", work)
    proc = subprocess.Popen([PY, "-m", "trainer.cli", "eval", "embedded-minilm", "--tasks",
                             str(ROOT / "recipes" / "walkthrough" / "tasks.yaml"), "--out", str(c.dir / "eval")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        if (c.dir / "eval" / "eval-status.json").exists():
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    status = json.loads((c.dir / "eval" / "eval-status.json").read_text()).get("state")
    add(c.name, "trainer eval", (f"exit {proc.returncode}; eval-status.json says {status}" if status != "running"
                                 or proc.returncode == 0 else "DEFECT: folder not marked"), first_line(err))
    small_corpus = c.dir / "corpus"
    run("datakit.cli", "build", str(c.recipe(qa % c.file("x.jsonl", qa_rows(24)))), "--out", str(small_corpus), "-q")
    base = (f"model: {{name_or_path: embedded-minilm}}\ndata: {{shards: {small_corpus}, batch_size: 2, negatives: 0, "
            "query_max_length: 16, doc_max_length: 16}\noutput_dir: run\nstages: [{steps: 4, lr: 1.0e-5}]\nsave_every: 2\n")
    c = Case("trainer run resumed after lr and batch changed", work)
    run("trainer.cli", "run", str(c.file("cfg.yaml", base)))
    (c.dir / "run" / "stage1" / "done").unlink()
    r = run("trainer.cli", "run", str(c.file("cfg.yaml", base.replace("lr: 1.0e-5", "lr: 5.0e-5")
                                             .replace("batch_size: 2", "batch_size: 3"))))
    add(c.name, "trainer run", classify(r) + f" (exit {r.returncode})", first_line(r.stderr))
    c = Case("full disk while saving a checkpoint (injected)", work)
    r = run("trainer.cli", "run", str(c.file("cfg.yaml", base)), env={"EMBEDKIT_FAULT": "save:ENOSPC"})
    partial = list((c.dir / "run").rglob("*.tmp"))
    add(c.name, "trainer run", classify(r) + ("; no partial file" if not partial else "; DEFECT: partial file left"),
        first_line(r.stderr))
    c = Case("trainer output_dir holding the user's files", work)
    c.file("run/README.md", "# mine\n")
    r = run("trainer.cli", "run", str(c.file("cfg.yaml", base)))
    add(c.name, "trainer run", classify(r) + ("; untouched" if sorted(p.name for p in (c.dir / "run").iterdir())
                                              == ["README.md"] else "; DEFECT: wrote into it"), first_line(r.stderr))
    # ---- one bad row costs one row
    c = Case("JSONL row with an escaped lone surrogate", work)
    r, out = c.build(c.recipe(qa % c.file("x.jsonl", qa_rows(3) + '{"question": "bad \\ud800", "answer": "b"}\n')))
    add(c.name, "datakit build", classify(r, out, expect="quarantine"), first_line(r.stderr))
    c = Case("0-byte CSV in a glob", work)
    c.file("d/a.csv", "question,answer\nq,a\n")
    c.file("d/b.csv", "")
    r, out = c.build(c.recipe("  - {name: qa, path: 'd/*.csv', adapter: qa}\n"))
    add(c.name, "datakit build", classify(r, out, expect="skipped"), first_line(r.stderr))
    c = Case("labels 1, \"1\", 1.0 and 2.5", work)
    labels = c.file("l.jsonl", "".join(json.dumps({"text": f"t{i}", "label": v}) + "\n"
                                       for i, v in enumerate([1, "1", 1.0, 2, 2.5])))
    r, out = c.build(c.recipe(f"  - {{name: l, path: {labels}, adapter: classification}}\n"))
    counts = (manifest(out) or {}).get("quarantined", {}).get("reasons")
    add(c.name, "datakit build", classify(r, out, expect="quarantine") + "; classes 1 and 2 only", str(counts))
    c = Case("folder source with a symlinked sub-folder inside and one outside", work)
    c.file("data/a.jsonl", qa_rows(2))
    c.file("more/b.jsonl", qa_rows(3))
    os.symlink(c.dir / "more", c.dir / "data" / "inside")
    os.symlink("/etc", c.dir / "data" / "outside")
    r, out = c.build(c.recipe("  - {name: qa, path: data, adapter: qa}\n"))
    add(c.name, "datakit build", classify(r, out, expect="skipped") +
        f"; {((manifest(out) or {}).get('counts') or {}).get('retrieval')} records", first_line(r.stderr))


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
