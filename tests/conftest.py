from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from datakit.pipeline import BuildResult, build
from datakit.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(textwrap.dedent(content).lstrip("\n"), encoding="utf-8")
    return path


def build_yaml(tmp_path: Path, recipe: str, **kwargs) -> BuildResult:
    """Write a recipe into tmp_path and build it into tmp_path/out."""
    path = write(tmp_path / "recipe.yaml", recipe)
    return build(load_recipe(path), tmp_path / "out", **kwargs)


@pytest.fixture(autouse=True, scope="session")
def _embedding_cache(tmp_path_factory):
    """Keep the tests' embedding cache out of the user's home."""
    import os

    os.environ["DATAKIT_CACHE"] = str(tmp_path_factory.mktemp("datakit_cache"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not present (users do not have it)")
    return SHARED_DATA
