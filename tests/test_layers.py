"""The house's layers, read from the source: every import (lazy ones inside functions included) points down.

embedkit < datakit < trainer; inside datakit, the engines know nothing of steps, executors or recipes, and the
steps nothing of executors, the pipeline or recipes; the trainer's training side reaches into datakit only
through the few pure-pyarrow modules that let it install without DuckDB, faiss or litellm."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("embedkit", "datakit", "trainer")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Our modules `name` imports anywhere in its file (a `from package import submodule` counts as the
    submodule, not the package)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            subs = {f"{base}.{alias.name}" for alias in node.names} & MODULES.keys()
            found |= subs or {base}
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(GRAPH):
        if node not in state and (found := visit(node)):
            return found
    return None


def _arrows(frm: str, to: tuple[str, ...]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in GRAPH.items() if a == frm or a.startswith(frm + ".")
                  for b in targets if any(b == t or b.startswith(t + ".") for t in to))


def test_the_graph_is_read_from_the_source():
    assert "datakit.engines.vectorsearch" in GRAPH["datakit.steps.mine"]  # a module-level import
    assert "datakit.recipe" in GRAPH["datakit.pipeline"]  # a lazy one, inside a function


def test_no_import_cycle_even_through_lazy_imports():
    cycle = _cycle()
    assert cycle is None, " -> ".join(cycle or [])


def test_no_arrow_points_back_up():
    assert _arrows("embedkit", ("datakit", "trainer")) == []
    assert _arrows("datakit", ("trainer",)) == []
    above_engines = ("datakit.steps", "datakit.pipeline", "datakit.executors", "datakit.ray_executor",
                     "datakit.recipe", "datakit.cli", "datakit.report")
    assert _arrows("datakit.engines", above_engines) == []
    assert _arrows("datakit.sources", above_engines + ("datakit.engines", "datakit.adapters")) == []
    assert _arrows("datakit.steps", above_engines[1:]) == []


def test_training_reaches_datakit_only_through_its_light_modules():
    light = ("datakit.records", "datakit.manifest", "datakit.manifest_schema", "datakit.card")
    training = [m for m in GRAPH
                if m.startswith("trainer") and not m.startswith(("trainer.eval", "trainer.experiment"))]
    reached = sorted({b for a in training for b in GRAPH[a] if b.startswith("datakit")})
    assert set(reached) <= set(light), reached
    for module in light:  # and those import nothing heavy of datakit's in turn
        assert {b for b in GRAPH[module] if b.startswith("datakit")} <= set(light) | {"datakit.hashing"}, module
