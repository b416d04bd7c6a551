"""Run a benchmark against another copy of the code: with EMBEDKIT_SOURCE=DIR set, `datakit`, `trainer` and
`embedkit` are imported from DIR instead of the editable install (whose import hook would otherwise win over
sys.path). For runs of hours that go on while the working tree changes: copy the tree, point this at the copy."""
from __future__ import annotations

import os
import sys


def use_configured_source() -> None:
    source = os.environ.get("EMBEDKIT_SOURCE")
    if source:
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
        sys.path.insert(0, source)
