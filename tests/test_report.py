"""The audit report: sections from real builds, escaping, one-line errors, comparison, and the demo's page
rendered in a real (headless, offline) Chromium."""
import json
import os
import re
from pathlib import Path

import pytest

from datakit.report import write_report
from datakit.report.collect import overlap
from tests import browser
from tests.conftest import build_yaml, run, write

PLANTED = "<script>document.body.setAttribute('data-pwned', '1')</script>"


def _corpus(folder: Path, extra: str = "") -> Path:
    write(folder / "qa.jsonl", "\n".join(json.dumps(r) for r in [
        {"question": f"How do I fix problem {i}? " + "please explain in detail " * (i % 4),
         "answer": f"Restart the device number {i} and wait a minute."} for i in range(12)]
        + [{"question": "Why does " + PLANTED + " show?", "answer": "Because it is text, not markup."},
           {"question": "", "answer": PLANTED}]) + "\n")
    write(folder / "labels.csv", "text,label\n" + "".join(f"sentence {i} about topic,t{i % 3}\n" for i in range(9))
          + extra)
    return folder


RECIPE = """name: small
sources:
  - {name: qa, path: qa.jsonl, adapter: qa, columns: {query: question, positive: answer}, instruction: Answer it}
  - {name: labels, path: labels.csv, adapter: classification, instruction: Classify it}
"""


def test_report_sections_escaping_and_lengths(tmp_path):
    _corpus(tmp_path)
    build_yaml(tmp_path, RECIPE)
    config = write(tmp_path / "train.yaml", "model: {name_or_path: embedded-minilm}\n"
                   f"data: {{shards: {tmp_path / 'out'}, query_max_length: 16, doc_max_length: 12}}\n"
                   f"output_dir: {tmp_path / 'model'}\n")
    page = write_report(tmp_path / "out", train_config=config).read_text()
    # data text is escaped: the planted script (in a quarantined row) shows as text
    assert PLANTED not in page and "&lt;script&gt;document.body.setAttribute(" in page
    # sections the build has, and none it does not have
    for present in ("overview", "quarantine", "lengths", "lineage"):
        assert f'<section id="{present}">' in page
    for absent in ("dedup", "contamination", "negatives", "synthesis"):
        assert f'<section id="{absent}">' not in page and f'href="#{absent}"' not in page
    markup = re.sub(r"<script>.*?</script>", "", page, flags=re.S)  # plotly.js inlined; its strings aside,
    assert "<script" not in markup and not re.search(r'(src|href)="(https?:)?//', markup)  # nothing is fetched
    # the truncation shares equal the training config's tokenizer and lengths applied by hand
    from transformers import AutoTokenizer

    from trainer.config import resolve_name

    tok = AutoTokenizer.from_pretrained(resolve_name("embedded-minilm")[0])
    rows = [json.loads(line) for line in (tmp_path / "qa.jsonl").read_text().splitlines()][:13]
    queries = ["Instruct: Answer it\nQuery: " + r["question"] for r in rows]
    expected = sum(len(tok(q)["input_ids"]) > 16 for q in queries) / len(queries)
    assert 0 < expected < 1
    line = re.search(r"<td>retrieval</td><td>query.*?</tr>", page).group(0)
    assert f"{expected:.1%}" in line and "<td class=\"n\">16</td>" in line


def test_report_errors_are_one_line(tmp_path):
    res = run("datakit", "report", str(tmp_path))
    assert res.returncode == 1 and "no manifest.json" in res.stderr and "Traceback" not in res.stderr
    _corpus(tmp_path)
    build_yaml(tmp_path, RECIPE)
    manifest = tmp_path / "out" / "manifest.json"
    old = json.loads(manifest.read_text())
    for key in ("format", "negatives"):
        old.pop(key)
    manifest.resolve().write_text(json.dumps(old))
    res = run("datakit", "report", str(tmp_path / "out"))
    assert res.returncode == 1 and "older datakit" in res.stderr and "negatives" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) <= 2  # one line, maybe wrapped


def test_report_of_a_step_applied_to_a_build(tmp_path):
    """`datakit dedup OUT --out OUT2` writes a manifest of its own; its report has the dedup section."""
    _corpus(tmp_path)
    write(tmp_path / "labels.csv", "text,label\nthe same sentence here,a\nthe same sentence here,b\nother,a\n")
    build_yaml(tmp_path, RECIPE)
    res = run("datakit", "dedup", str(tmp_path / "out"), "--out", str(tmp_path / "dd"))
    assert res.returncode == 0, res.stderr
    res = run("datakit", "report", str(tmp_path / "dd"))
    assert res.returncode == 0, res.stderr
    page = (tmp_path / "dd" / "report.html").read_text()
    assert '<section id="dedup">' in page and "Label conflicts" in page and "the same sentence here" in page


def test_compare_marks_what_changed(tmp_path):
    _corpus(tmp_path / "a")
    _corpus(tmp_path / "b", extra="one more sentence,t0\nand another one,t1\n")
    build_yaml(tmp_path / "a", RECIPE)
    build_yaml(tmp_path / "b", RECIPE)
    res = run("datakit", "report", str(tmp_path / "a" / "out"), "--compare", str(tmp_path / "b" / "out"))
    assert res.returncode == 0, res.stderr
    page = (tmp_path / "a" / "out" / "compare.html").read_text()
    changed = re.findall(r'<tr class="changed">(.*?)</tr>', page)
    assert any("<td>classification</td><td>labels</td>" in r and "+2" in r for r in changed)
    assert not any("<td>qa</td>" in r for r in changed if "<td>retrieval</td>" in r)
    assert re.search(r'<tr class="same"><td>retrieval</td><td>qa</td>', page)


def test_overlap_marks_shared_spans():
    ours, theirs = overlap("Open the login page, choose Forgot password, then wait.",
                           "Password help. Open the login page and choose Forgot password.")
    assert [t for t, shared in ours if shared] == ["Open the login page", "choose Forgot password"]
    assert "".join(t for t, _ in theirs) == "Password help. Open the login page and choose Forgot password."
    zh, _ = overlap("如何重置我的密码？请帮忙", "请问如何重置我的密码")
    assert [t for t, shared in zh if shared] == ["如何重置我的密码"]


@pytest.fixture(scope="module")
def chromium():
    if browser.chromium() is None:
        if os.environ.get("DATAKIT_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed (.ci/run installs it: apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")


def test_the_browser_check_sees_errors_and_executed_scripts(tmp_path, chromium):
    """The probe itself: a page that throws, and a page that runs the planted script, are both caught."""
    bad = write(tmp_path / "bad.html", "<html><head></head><body><p>x</p><script>notDefined();</script></body></html>")
    shown = browser.render(bad)
    assert shown.loaded and any("notDefined" in e for e in shown.errors)
    raw = write(tmp_path / "raw.html", f"<html><head></head><body><p>x</p>{PLANTED}</body></html>")
    assert "data-pwned" in re.search(r"<body[^>]*>", browser.render(raw).dom).group(0)


def test_demo_report_in_a_real_browser(tmp_path, chromium, demo_cli):
    page = demo_cli / "report.html"  # written by `datakit build --report`
    html = page.read_text()
    shown = browser.render(page)
    assert shown.loaded and shown.errors == [], shown.errors
    body = re.search(r"<body[^>]*>", shown.dom).group(0)
    assert "data-pwned" not in body  # the planted script (a quarantined demo row) did not run...
    assert "&lt;script&gt;document.body.setAttribute('data-pwned', '1')&lt;/script&gt;" in shown.dom  # ...it shows
    plots = browser.plot_census(shown.dom)
    assert len(plots) == html.count('<div class="plot" id="fig-') >= 9
    assert all(p["svg"] >= 1 and p["traces"] >= 1 for p in plots.values()), plots
    for section in ("overview", "quarantine", "dedup", "contamination", "negatives", "synthesis", "lengths",
                    "lineage", "cards"):
        assert f'<section id="{section}">' in shown.dom
    # the corpus card, rendered: its tables (records, sources, steps, benchmark overlap) drawn as tables
    card = shown.dom.split('<div class="card card-corpus">', 1)[1].split("</section>", 1)[0]
    assert card.count("<table>") >= 4 and "<h2>Benchmark overlap</h2>" in card and "STSDemo" in card
    assert "<mark>How do I reset my password?</mark>" in shown.dom  # the contaminated span, highlighted
    png = browser.screenshot(page, tmp_path / "report.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
