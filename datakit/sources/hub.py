"""Hugging Face datasets (streaming), with errors a user can act on.
"""
from __future__ import annotations

from typing import Iterator

import pyarrow as pa

from datakit.sources.chunks import Chunk, ColumnSpec, project, row_range
from datakit.sources.files import shown_path
from datakit.sources.sandbox import Sandbox
from datakit.sources.syntax import HFSource, SourceError


def read_hf(hf: HFSource, sandbox: Sandbox, need: ColumnSpec, batch_rows: int) -> Iterator[Chunk]:
    import datasets  # heavy: imported only when a recipe uses the hub

    local = sandbox.absolute(hf.path)
    if local.exists():
        sandbox.check(local, f"hf.path {hf.path!r}")
    if (local / "dataset_info.json").exists() or (local / "dataset_dict.json").exists():
        ds = datasets.load_from_disk(str(local))
        if isinstance(ds, datasets.DatasetDict):
            if hf.split not in ds:
                raise SourceError(f"{hf.path}: no split {hf.split!r} (splits: {', '.join(ds)})")
            ds = ds[hf.split]
        shown = shown_path(local, sandbox.base_dir)
    else:
        target = str(local) if local.exists() else hf.path
        try:
            ds = datasets.load_dataset(target, hf.name, split=hf.split, streaming=hf.streaming,
                                       revision=hf.revision, data_files=hf.data_files)
        except Exception as exc:  # noqa: BLE001 - hub, network, auth and dataset-script errors of every kind
            raise SourceError(hf_error(hf, exc)) from None
        shown = f"hf:{hf.path}" + (f"/{hf.name}" if hf.name else "") + f":{hf.split}"
    if ds.column_names is not None:  # None for some streaming datasets until read
        ds = ds.select_columns(need.check(shown, list(ds.column_names)))
    seen = 0
    if isinstance(ds, datasets.IterableDataset):
        for batch in ds.iter(batch_size=batch_rows):
            table = project(pa.Table.from_pydict(batch), need.names)
            yield Chunk(table, shown, row_range(seen, table.num_rows))
            seen += table.num_rows
    else:
        for table in ds.with_format("arrow").iter(batch_size=batch_rows):
            table = project(table, need.names)
            yield Chunk(table, shown, row_range(seen, table.num_rows))
            seen += table.num_rows


def hf_error(hf: HFSource, exc: BaseException) -> str:
    """One line for a Hugging Face dataset that cannot be opened: unreachable, mistyped, private, or gated."""
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    low = f"{name} {text}".lower()
    if "gated" in low or "401" in low or "403" in low or "unauthorized" in low or "authentication" in low:
        why = "it is private or gated: log in (`hf auth login`) or set HF_TOKEN, and accept its terms on the hub"
    elif "offline" in low or "connection" in low or "resolve" in low or "network" in low or "timed out" in low:
        why = "the hub cannot be reached (offline?); set HF_HUB_OFFLINE=1 to use a cached copy, or give a local folder"
    elif "doesn't exist" in low or "not found" in low or "404" in low or "datasetnotfound" in low:
        why = "no such dataset (mistyped id, or a private one without a token)"
    else:
        why = f"{name}: {text[:300]}"
    return f"hf:{hf.path}" + (f" ({hf.name})" if hf.name else "") + f" split {hf.split!r}: cannot open: {why}"
