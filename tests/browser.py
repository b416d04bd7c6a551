"""Open an HTML file in headless Chromium with no network; return the DOM after its scripts ran.

Also a command that writes a screenshot: `python -m tests.browser PAGE.html SHOT.png` (docs/report-demo.png).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Injected at the top of <head> in a copy of the page: records uncaught errors and console.error calls, then
# writes them (and a "loaded" mark) onto <body> once the page settled, where --dump-dom can see them.
_PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) { window.__errors.push(String(e.message || e)); });
(function () { var orig = console.error; console.error = function () {
  window.__errors.push(Array.prototype.map.call(arguments, String).join(" ")); orig.apply(console, arguments); }; })();
window.addEventListener("load", function () { setTimeout(function () {
  document.body.setAttribute("data-errors", JSON.stringify(window.__errors));
  document.body.setAttribute("data-loaded", "1"); }, 1000); });
</script>"""
_OFFLINE = ["--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]


def chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _run(args: list[str], timeout: int = 180) -> subprocess.CompletedProcess:
    exe = chromium()
    if exe is None:
        raise FileNotFoundError("no chromium on PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                               f"--user-data-dir={profile}", "--virtual-time-budget=20000", *_OFFLINE, *args],
                              capture_output=True, text=True, timeout=timeout)


@dataclass
class Rendered:
    dom: str
    errors: list[str]  # uncaught errors and console.error calls
    loaded: bool
    stderr: str


def render(page: Path) -> Rendered:
    """The DOM of `page` after its scripts ran (offline), with the errors the page raised."""
    html = page.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / page.name
        probe.write_text(html.replace("<head>", "<head>\n" + _PROBE, 1), encoding="utf-8")
        res = _run(["--dump-dom", probe.resolve().as_uri()])
    body = re.search(r"<body([^>]*)>", res.stdout)
    attrs = body.group(1) if body else ""
    errors = re.search(r'data-errors="([^"]*)"', attrs)
    decoded = json.loads(errors.group(1).replace("&quot;", '"').replace("&amp;", "&")) if errors else []
    return Rendered(res.stdout, decoded, 'data-loaded="1"' in attrs, res.stderr)


def screenshot(page: Path, png: Path, width: int = 1400, height: int = 2400) -> Path:
    png.parent.mkdir(parents=True, exist_ok=True)
    res = _run([f"--screenshot={png.resolve()}", f"--window-size={width},{height}", "--hide-scrollbars",
                page.resolve().as_uri()])
    if not png.exists():
        raise RuntimeError(f"chromium wrote no screenshot: {res.stderr[-500:]}")
    return png


def plot_census(dom: str) -> dict[str, dict[str, int]]:
    """Per plot div (`div.plot`, id fig-*): the plotly SVG roots and drawn traces inside it (a plot's div is
    followed by the script that drew it, so its content ends at the next <script>)."""
    parts = re.split(r'<div class="plot[^"]*" id="(fig-[^"]+)"', dom)
    plots = {}
    for name, chunk in zip(parts[1::2], parts[2::2]):
        inside = chunk.split("<script", 1)[0]
        plots[name] = {"svg": len(re.findall(r'<svg[^>]*class="main-svg"', inside)),
                       "traces": len(re.findall(r'class="[^"]*\btrace\b', inside))}
    return plots


if __name__ == "__main__":
    page, png = Path(sys.argv[1]), Path(sys.argv[2])
    print(screenshot(page, png, *(int(x) for x in sys.argv[3:5])) if os.path.exists(page) else f"no {page}")
