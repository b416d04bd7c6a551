"""Benchmark packs: the evaluation texts of MTEB/CMTEB tasks, pre-hashed for decontamination.

A pack is a folder::

    PACK/pack.json        parameters (MinHash, long n-gram) and per-task counts
    PACK/texts.parquet    task, split, field, text, hash (normalised-text hash)
    PACK/texts.arrow      the same, uncompressed, memory-mapped by the decontaminate step
    PACK/signatures.npy   (n_texts, num_perm) uint32 MinHash signatures
    PACK/exact.npy        sorted normalised-text hashes, with exact_rows.npy (the text row of each)
    PACK/ngrams.npy       sorted long n-gram hashes of content, with ngram_rows.npy
    PACK/boilerplate.npy  long n-grams found in many benchmark texts (markup, bylines, footers): ignored

so a decontamination run never re-hashes the benchmarks, and holds none of a pack in memory: its arrays are
memory-mapped and its LSH buckets for a threshold are sorted a band at a time into a scratch folder. Packs come
from local files (`--from-files`, offline) or from the `mteb` package (network needed).
"""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import tempfile
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datakit.engines import minhash as mh
from datakit.engines import spill
from datakit.hashing import hash_strings
from datakit.sources import arrow_reader

if TYPE_CHECKING:
    import duckdb

PACK_FORMAT = 1
BUCKET_CHUNK = 262_144  # pack signatures banded at a time
READ_BATCH = 16_384  # benchmark file rows fetched at a time
_SPLIT_WORDS = ("test", "dev", "validation", "val", "train")
_NOT_DATA = re.compile(r"(\d+-)?(readme|license|licence|changelog|provenance)", re.I)
_DATA_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".txt", ".parquet", ".gz")


class PackError(ValueError):
    """A benchmark pack cannot be built or read."""


@dataclass(frozen=True)
class PackParams:
    num_perm: int = 128
    ngram: int = 1  # MinHash word shingles: sets of words, robust to swaps and drops in short texts
    char_ngram: int = 2
    long_ngram: int = 13  # words: a shared run this long marks contamination
    long_char_ngram: int = 30  # Chinese/Japanese: characters
    seed: int = 1
    boilerplate_df: int = 5  # a long n-gram in this many texts (of the pack, or of a training batch) is boilerplate

    def minhash(self) -> mh.MinHashConfig:
        return mh.MinHashConfig(num_perm=self.num_perm, ngram=self.ngram, char_ngram=self.char_ngram, seed=self.seed)

    def long(self) -> mh.MinHashConfig:
        return mh.MinHashConfig(ngram=self.long_ngram, char_ngram=self.long_char_ngram, seed=self.seed)


# markup and links: escaped and plain HTML tags, URLs, entities (web text shares long runs of these)
_MARKUP = r"&lt;.*?&gt;|<[^<>]{0,400}>|(?:https?://|www\.)\S+|&#?[A-Za-z0-9]{1,8};"


def strip_markup(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Texts with markup and links replaced by spaces (before the long n-grams are taken)."""
    t = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    return pc.replace_substring_regex(pc.fill_null(t.cast(pa.string()), ""), _MARKUP, " ")


def ngram_text(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """What the long n-gram detector compares: the normalised text without markup and links."""
    return mh.normalize(strip_markup(texts))


def common_ngrams(h: np.ndarray, doc: np.ndarray, min_df: int) -> np.ndarray:
    """The n-gram hashes found in at least `min_df` distinct texts (boilerplate: bylines, footers, menus)."""
    if len(h) == 0 or min_df <= 1:
        return np.zeros(0, np.uint64)
    pairs = np.unique(np.stack([h, doc.astype(np.uint64)], axis=1), axis=0)
    values, df = np.unique(pairs[:, 0], return_counts=True)
    return values[df >= min_df]


def content_ngrams(norm: pa.Array, params: PackParams, boilerplate: np.ndarray | None = None,
                   batch_df: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hash, text index, the boilerplate hashes found) of the long n-grams made of content only.

    Boilerplate is an n-gram found in `params.boilerplate_df` texts or more (of these texts when `batch_df`, or
    in `boilerplate`, the pack's); every word such an n-gram covers is boilerplate, and an n-gram touching one
    is dropped, so a run straddling the end of an article and a wire footer marks nothing either."""
    gh, gdoc = long_ngrams(norm, params)
    common = common_ngrams(gh, gdoc, params.boilerplate_df) if batch_df else np.zeros(0, np.uint64)
    if boilerplate is not None and len(boilerplate):
        common = np.union1d(common, boilerplate)
    if len(gh) == 0 or len(common) == 0:
        return gh, gdoc, common
    n = np.where(mh.is_cjk(norm, mh.MinHashConfig().cjk_ratio), params.long_char_ngram, params.long_ngram)
    starts = np.concatenate([[0], np.nonzero(np.diff(gdoc))[0] + 1])  # each text's first n-gram
    pos = np.arange(len(gh)) - np.repeat(starts, np.diff(np.append(starts, len(gh))))
    width = n[gdoc]
    grams_per_doc = np.bincount(gdoc, minlength=len(norm))
    tokens = np.where(grams_per_doc > 0, grams_per_doc + n - 1, 0)
    tok0 = np.concatenate([[0], np.cumsum(tokens)])[gdoc]  # where each n-gram's text starts in one token line
    diff = np.zeros(int(tokens.sum()) + 1, np.int64)
    hit = np.isin(gh, common)
    np.add.at(diff, tok0[hit] + pos[hit], 1)
    np.add.at(diff, tok0[hit] + pos[hit] + width[hit], -1)
    covered = np.concatenate([[0], np.cumsum(np.cumsum(diff)[:-1] > 0)])  # prefix count of covered tokens
    clean = covered[tok0 + pos + width] - covered[tok0 + pos] == 0
    return gh[clean], gdoc[clean], common


def long_ngrams(norm: pa.Array, params: PackParams) -> tuple[np.ndarray, np.ndarray]:
    """(n-gram hash, text index) of the long n-grams of normalised texts; shorter texts give none."""
    h, doc = mh.shingle(norm, params.long(), normalized=True)
    words = pa.compute.list_value_length(pa.compute.utf8_split_whitespace(norm)).to_numpy(zero_copy_only=False)
    chars = pa.compute.utf8_length(norm).to_numpy(zero_copy_only=False)
    cjk = mh.is_cjk(norm, mh.MinHashConfig().cjk_ratio)
    long_enough = np.where(cjk, chars >= params.long_char_ngram, words >= params.long_ngram)
    ok = long_enough[doc] if len(doc) else np.zeros(0, bool)
    return h[ok], doc[ok]


# ------------------------------------------------------------------ reading benchmark files
def _split_of(name: str) -> str:
    for word in re.split(r"[^a-z]+", name.lower()):
        if word in _SPLIT_WORDS:
            return "validation" if word == "val" else word
    return "test"


def _relation(con: duckdb.DuckDBPyConnection, path: Path) -> str:
    p = str(path).replace("'", "''")
    name = path.name.lower()
    if name.endswith((".parquet",)):
        return f"read_parquet('{p}')"
    if any(name.endswith(s) or name.endswith(s + ".gz") for s in (".jsonl", ".json", ".ndjson")):
        return f"read_json('{p}', format='newline_delimited', union_by_name=true)"
    if any(name.endswith(s) or name.endswith(s + ".gz") for s in (".tsv", ".txt")) or _tab_separated(path):
        header = "true" if _has_header(path) else "false"
        return (f"read_csv('{p}', delim='\\t', quote='', escape='', header={header}, all_varchar=true, "
                "strict_mode=false, null_padding=true)")
    return f"read_csv('{p}', all_varchar=true, strict_mode=false, null_padding=true, parallel=false)"


def task_name(path: Path) -> str:
    """A benchmark file's task: its name without compression, format and split suffixes
    (`topics.beir-v1.0.0-nq.test.tsv.gz` -> `topics.beir-v1.0.0-nq`, `STSDemo.test.tsv` -> `STSDemo`); a file
    named only by its split (`banking77/test.csv`) takes its folder's name."""
    name = re.sub(r"\.(gz|bz2|zst|xz)$", "", path.name, flags=re.I)
    name = re.sub(r"\.(jsonl|ndjson|json|csv|tsv|txt|parquet|pq|data)$", "", name, flags=re.I)
    if name.lower() in _SPLIT_WORDS:
        return path.resolve().parent.name or name
    return re.sub(r"[._-](test|dev|validation|val|train)$", "", name, flags=re.I) or name


def _head_lines(path: Path, n: int = 50) -> list[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        return [line.rstrip("\n") for _, line in zip(range(n), fh) if line.strip()]


def _tab_separated(path: Path) -> bool:
    """Many '.csv' benchmark files (STS-B) are really tab-separated: every line has a tab."""
    lines = _head_lines(path)
    return bool(lines) and all("\t" in line for line in lines)


def _has_header(path: Path) -> bool:
    """A first line of short identifier-like fields (query-id, sentence1, ...) is a header."""
    lines = _head_lines(path, 2)
    return bool(lines) and all(re.fullmatch(r"[A-Za-z_][\w\- ]{0,40}", f or "_") for f in lines[0].split("\t"))


def _text_columns(con: duckdb.DuckDBPyConnection, rel: str, fields: list[str] | None) -> list[str]:
    """Columns that hold natural-language text: long enough on average and mostly with spaces (or CJK)."""
    cols = con.sql(f"DESCRIBE SELECT * FROM {rel}").fetchall()
    names = [c[0] for c in cols if c[1] == "VARCHAR"]
    if fields:
        return [f for f in fields if f in names]
    out = []
    for c in names:
        q = f'"{c}"'
        avg_len, spaced = con.sql(
            f"SELECT avg(length({q})), avg(CASE WHEN {q} LIKE '% %' OR regexp_matches({q}, '\\p{{Han}}') "
            f"THEN 1 ELSE 0 END) FROM (SELECT {q} FROM {rel} WHERE {q} IS NOT NULL LIMIT 2000)").fetchall()[0]
        if avg_len is not None and avg_len >= 12 and (spaced or 0) >= 0.5:
            out.append(c)
    return out


def _stream(con: duckdb.DuckDBPyConnection, sql: str) -> Iterator[str]:
    """The one text column of a query, fetched a batch at a time, blank texts left out."""
    for batch in arrow_reader(con.sql(sql), READ_BATCH):
        yield from (t for t in batch.column(0).to_pylist() if t and t.strip())


def _file_texts(con: duckdb.DuckDBPyConnection, path: Path, fields: list[str] | None) -> Iterator[tuple[str, Iterator[str]]]:
    rel = _relation(con, path)
    for col in _text_columns(con, rel, fields):
        yield col, _stream(con, f'SELECT "{col}" FROM {rel} WHERE "{col}" IS NOT NULL')


def _beir_texts(con: duckdb.DuckDBPyConnection, folder: Path, corpus: bool) -> Iterator[tuple[str, str, Iterator[str]]]:
    """(split, field, texts) of a BEIR folder: queries of the qrels' splits, and the corpus."""
    queries = next((folder / n for n in ("queries.jsonl", "queries.jsonl.gz") if (folder / n).exists()), None)
    qrels = sorted((folder / "qrels").glob("*.tsv")) if (folder / "qrels").exists() else []
    if queries is not None:
        qrel = _relation(con, queries)
        for split_file in qrels or [None]:
            split = split_file.stem if split_file else "test"
            if split_file is None:
                sql = f"SELECT text FROM {qrel}"
            else:
                ids = f"read_csv('{split_file}', delim='\\t', header=true, all_varchar=true)"
                sql = (f'SELECT q.text FROM {qrel} q WHERE CAST(q._id AS VARCHAR) IN '
                       f'(SELECT "query-id" FROM {ids})')
            yield split, "query", _stream(con, sql)
    if corpus:
        docs = next((folder / n for n in ("corpus.jsonl", "corpus.jsonl.gz") if (folder / n).exists()), None)
        if docs is not None:
            rel = _relation(con, docs)
            yield "corpus", "document", _stream(
                con, f"SELECT CASE WHEN coalesce(title, '') <> '' THEN title || '. ' || text ELSE text END "
                     f"FROM {rel} WHERE coalesce(text, '') <> ''")


def _is_beir(folder: Path) -> bool:
    return any((folder / n).exists() for n in ("queries.jsonl", "queries.jsonl.gz", "corpus.jsonl", "corpus.jsonl.gz"))


def _folder_texts(con: duckdb.DuckDBPyConnection, folder: Path, corpus: bool, fields: list[str] | None
                  ) -> Iterator[tuple[str, str, str, Iterator[str]]]:
    """A folder of data files is one task; its sub-folders (BEIR or not) are tasks of their own."""
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if _is_beir(sub):
            for split, field, texts in _beir_texts(con, sub, corpus):
                yield sub.name, split, field, texts
        else:
            yield from _folder_texts(con, sub, corpus, fields)
    for f in sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(_DATA_SUFFIXES)
                    and not _NOT_DATA.match(p.name)):
        for field, texts in _file_texts(con, f, fields):
            yield folder.name, _split_of(f.name), f"{f.stem}:{field}", texts


def texts_from_files(inputs: Iterable[Path], corpus: bool = True, fields: list[str] | None = None
                     ) -> Iterator[tuple[str, str, str, Iterator[str]]]:
    """(task, split, field, texts) from files and folders; each file or folder is a task. Texts are streamed
    (fetched a batch at a time): take each item's texts before the next item."""
    import duckdb  # here: importing it costs every build ~0.2 s

    con = duckdb.connect()
    for item in inputs:
        item = Path(item)
        if not item.exists():
            raise PackError(f"{item}: no such file or folder")
        if item.is_dir() and _is_beir(item):
            for split, field, texts in _beir_texts(con, item, corpus):
                yield item.name, split, field, texts
        elif item.is_dir():
            yield from _folder_texts(con, item, corpus, fields)
        else:
            for field, texts in _file_texts(con, item, fields):
                yield task_name(item), _split_of(item.name), field, texts


def texts_from_mteb(benchmark: str | None, tasks: list[str] | None, corpus: bool = True
                    ) -> Iterator[tuple[str, str, str, list[str]]]:  # pragma: no cover - needs the network
    """(task, split, field, texts) of MTEB tasks' evaluation splits, through the `mteb` package."""
    try:
        import mteb
    except ImportError:
        raise PackError("building a pack from MTEB needs the `mteb` package: pip install mteb") from None
    chosen = list(mteb.get_benchmark(benchmark).tasks) if benchmark else []
    if tasks:
        chosen = [t for t in chosen if t.metadata.name in tasks] if chosen else list(mteb.get_tasks(tasks=tasks))
    for task in chosen:
        meta = task.metadata
        task.load_data()
        for split in meta.eval_splits:
            if meta.type in ("Retrieval", "Reranking", "InstructionRetrieval"):
                queries = getattr(task, "queries", {}).get(split, {})
                queries = queries.get("default", queries) if isinstance(queries, dict) else queries
                yield meta.name, split, "query", [q if isinstance(q, str) else str(q) for q in dict(queries).values()]
                if corpus:
                    docs = getattr(task, "corpus", {}).get(split, {})
                    docs = docs.get("default", docs) if isinstance(docs, dict) and "default" in docs else docs
                    yield meta.name, split, "document", [
                        (f"{d.get('title', '')}. {d.get('text', '')}" if isinstance(d, dict) else str(d))
                        for d in dict(docs).values()]
                continue
            data = task.dataset[split] if "default" not in task.dataset else task.dataset["default"][split]
            for col in ("sentence1", "sentence2", "text", "sentences", "sent1", "sent2", "query", "positive",
                        "negative", "premise", "hypothesis"):
                if col in data.column_names:
                    values = data[col]
                    flat = [v for x in values for v in (x if isinstance(x, list) else [x]) if isinstance(v, str)]
                    yield meta.name, split, col, flat


# ------------------------------------------------------------------ pack building and loading
PACK_CHUNK = 65_536  # benchmark texts hashed at a time, at most
PACK_CHUNK_BYTES = 16 << 20  # and at most this much text (long documents: memory follows bytes, not texts)


PACK_FILES = {"pack.json", "texts.parquet", "texts.arrow", "signatures.npy", "ngram_rows.npy", "exact_rows.npy",
              "exact.npy", "ngrams.npy", "boilerplate.npy"}


def claim_pack_folder(out: Path) -> Path:
    """`datakit bench build --out`: a new or empty folder, or a pack folder (embedkit.outfolder)."""
    from embedkit.outfolder import claim

    return claim(out, "datakit pack", lambda p: p.name in PACK_FILES or p.name.startswith(".building-"),
                 lambda f: (f / "pack.json").is_file())


def build_pack(items: Iterable[tuple[str, str, str, Iterable[str]]], out: Path, params: PackParams = PackParams()) -> dict:
    """Hash every benchmark text once and write the pack folder; returns pack.json's content.

    Texts are hashed PACK_CHUNK at a time, and what must be sorted (text hashes, long n-grams) goes through
    ordered partitions on disk, so memory holds a chunk and one partition, never the pack. The pack is made in a
    scratch folder inside `out` and moved in file by file, pack.json last: a killed build leaves no pack that
    looks whole, and a reader holds the files it opened."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=out))
    try:
        meta = _write_pack(items, tmp, params)
        (out / "pack.json").unlink(missing_ok=True)
        for f in sorted(tmp.iterdir()):
            if f.name != "pack.json":
                os.replace(f, out / f.name)
        os.replace(tmp / "pack.json", out / "pack.json")
        return meta
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _text_chunks(items: Iterable[tuple[str, str, str, Iterable[str]]]) -> Iterator[pa.Table]:
    """(task, split, field, text) tables of about PACK_CHUNK rows or PACK_CHUNK_BYTES of text, read a batch at a
    time. A text repeated within one item is kept once: an item remembers the 64-bit hashes of its texts (8 bytes
    a text; two different texts of one item share a hash with odds about n^2 / 2^65, 3e-6 for ten million)."""
    pending: list[pa.Table] = []
    size = nbytes = 0
    for task, split, field, texts in items:
        seen = _SeenHashes()
        for batch in _batched(texts, PACK_CHUNK, PACK_CHUNK_BYTES):
            arr = pa.array(batch, pa.string())
            h = hash_strings(arr)
            keep = np.zeros(len(h), bool)
            keep[np.unique(h, return_index=True)[1]] = True
            keep &= ~seen.contains(h)
            seen.add(h[keep])
            arr = arr.filter(pa.array(keep))
            pending.append(pa.table([pa.array([task] * len(arr), pa.string()), pa.array([split] * len(arr), pa.string()),
                                     pa.array([field] * len(arr), pa.string()), arr], schema=_TEXT_SCHEMA))
            size += len(arr)
            nbytes += arr.nbytes
            if size >= PACK_CHUNK or nbytes >= PACK_CHUNK_BYTES:
                yield pa.concat_tables(pending).combine_chunks()
                pending, size, nbytes = [], 0, 0
    if size:
        yield pa.concat_tables(pending).combine_chunks()


def _batched(texts: Iterable[str], n: int, max_chars: int) -> Iterator[list[str]]:
    batch: list[str] = []
    chars = 0
    for t in texts:
        batch.append(t)
        chars += len(t)
        if len(batch) == n or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


class _SeenHashes:
    """A growing set of uint64 hashes as sorted arrays: a small one taking additions, merged into the big one
    when it passes a million."""

    def __init__(self) -> None:
        self.big = self.small = np.zeros(0, np.uint64)

    def contains(self, h: np.ndarray) -> np.ndarray:
        return _in_sorted(self.big, h) | _in_sorted(self.small, h)

    def add(self, h: np.ndarray) -> None:
        self.small = np.union1d(self.small, h)
        if len(self.small) > 1 << 20:
            self.big, self.small = np.union1d(self.big, self.small), np.zeros(0, np.uint64)


def _in_sorted(sorted_keys: np.ndarray, h: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0:
        return np.zeros(len(h), bool)
    at = np.minimum(np.searchsorted(sorted_keys, h), len(sorted_keys) - 1)
    return sorted_keys[at] == h


_TEXT_SCHEMA = pa.schema([("task", pa.string()), ("split", pa.string()), ("field", pa.string()),
                          ("text", pa.string())])


def _write_pack(items: Iterable[tuple[str, str, str, Iterable[str]]], folder: Path, params: PackParams) -> dict:
    import pyarrow.parquet as pq  # here, not at import: every build imports this module, few build packs

    scratch = folder / "scratch"
    scratch.mkdir()
    exact = spill.Partitions(scratch, "exact", ordered=True)  # (text row, normalised-text hash)
    grams = spill.Partitions(scratch, "grams", ordered=True)  # (text row, long n-gram hash)
    schema = _TEXT_SCHEMA.append(pa.field("hash", pa.uint64()))
    counts: dict[str, dict[str, int]] = {}
    n, sig_dtype = 0, np.dtype(np.uint32)
    with open(scratch / "signatures.bin", "wb") as sig_file, \
            pa.ipc.new_file(str(folder / "texts.arrow"), schema) as arrow, \
            pq.ParquetWriter(folder / "texts.parquet", schema) as parquet:
        for chunk in _text_chunks(items):
            norm = mh.normalize(chunk.column("text"))
            hashes = hash_strings(norm)
            table = chunk.append_column("hash", pa.array(hashes, pa.uint64()))
            arrow.write_table(table, max_chunksize=65_536)
            parquet.write_table(table)
            sig = mh.signatures(norm, params.minhash(), normalized=True)
            sig_dtype = sig.dtype
            sig.tofile(sig_file)
            rows = np.arange(n, n + len(hashes), dtype=np.int64)
            exact.append(rows, hashes)
            gh, gdoc = long_ngrams(ngram_text(chunk.column("text")), params)
            grams.append(gdoc + n, gh)
            for task, split in zip(chunk.column("task").to_pylist(), chunk.column("split").to_pylist()):
                counts.setdefault(task, {}).setdefault(split, 0)
                counts[task][split] += 1
            n += len(hashes)
    exact.close(), grams.close()
    if n == 0:
        raise PackError("no benchmark text found")
    with open(scratch / "signatures.bin", "rb") as raw, \
            _NpyWriter(folder / "signatures.npy", sig_dtype, (n, params.num_perm)) as out_sig:
        while block := raw.read(PACK_CHUNK * params.num_perm * sig_dtype.itemsize):
            out_sig.write(np.frombuffer(block, sig_dtype))
    _sorted_npy(exact, folder / "exact.npy", folder / "exact_rows.npy")
    # runs shared by many benchmark texts (bylines, footers, menus) mark no one text: dropped, and kept aside
    # so the decontaminate step drops them from training texts too
    boilerplate = _boilerplate(grams, params.boilerplate_df)
    np.save(folder / "boilerplate.npy", boilerplate)
    if len(boilerplate):
        grams = _content_grams(folder / "texts.arrow", scratch, params, boilerplate)
    _sorted_npy(grams, folder / "ngrams.npy", folder / "ngram_rows.npy")
    shutil.rmtree(scratch)
    meta = {"format": PACK_FORMAT, "params": asdict(params), "n_texts": n, "tasks": counts,
            "boilerplate_ngrams": int(len(boilerplate))}
    (folder / "pack.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _sorted_npy(parts: spill.Partitions, keys_path: Path, rows_path: Path) -> None:
    """Ordered partitions written out as sorted keys and their rows (rows ascending within a key)."""
    with _NpyWriter(keys_path, np.uint64, (parts.n,)) as keys, _NpyWriter(rows_path, np.int64, (parts.n,)) as rows:
        for pos, key in parts.each():
            keys.write(key)
            rows.write(pos)


class _NpyWriter:
    """A `.npy` file written front to back with plain writes (a memmap's written pages would stay in the
    process's RSS until it is closed)."""

    def __init__(self, path: Path, dtype: Any, shape: tuple[int, ...]):
        self.dtype, self.fh = np.dtype(dtype), open(path, "wb")
        np.lib.format.write_array_header_1_0(self.fh, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                       "fortran_order": False, "shape": shape})
        self.expected, self.written = int(np.prod(shape)) * self.dtype.itemsize, 0

    def write(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, self.dtype)
        values.tofile(self.fh)
        self.written += values.nbytes

    def __enter__(self) -> "_NpyWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.fh.close()
        if exc[0] is None and self.written != self.expected:
            raise RuntimeError(f"{self.fh.name}: wrote {self.written} bytes of the {self.expected} its header "
                               "declares (a bug in datakit's pack builder; the pack is not moved into place)")


def _boilerplate(grams: spill.Partitions, min_df: int) -> np.ndarray:
    """`common_ngrams` over ordered partitions: the n-gram hashes in at least `min_df` distinct texts, sorted."""
    if min_df <= 1:
        return np.zeros(0, np.uint64)
    found = [np.zeros(0, np.uint64)]
    for pos, key in grams.each():
        distinct = np.r_[True, (key[1:] != key[:-1]) | (pos[1:] != pos[:-1])]
        values, df = np.unique(key[distinct], return_counts=True)
        found.append(values[df >= min_df])
    return np.concatenate(found)


def _content_grams(texts_path: Path, scratch: Path, params: PackParams, boilerplate: np.ndarray) -> spill.Partitions:
    """The long n-grams again, a written chunk of texts at a time, without those touching boilerplate."""
    clean = spill.Partitions(scratch, "content", ordered=True)
    reader = pa.ipc.open_file(pa.OSFile(str(texts_path)))  # read, not mapped: touched pages would stay in RSS
    start = 0
    for i in range(reader.num_record_batches):  # the chunks as written
        texts = reader.get_batch(i).column("text")
        gh, gdoc, _ = content_ngrams(ngram_text(texts), params, boilerplate, batch_df=False)
        clean.append(gdoc + start, gh)
        start += len(texts)
    clean.close()
    return clean


class Pack:
    """A loaded pack: arrays memory-mapped, LSH buckets built on demand for a threshold."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta_path = self.folder / "pack.json"
        if not meta_path.exists():
            raise PackError(f"{self.folder}: not a benchmark pack (no pack.json); build one with `datakit bench build`")
        self.meta = json.loads(meta_path.read_text())
        self.params = PackParams(**self.meta["params"])
        arrow = self.folder / "texts.arrow"
        if not arrow.exists():
            raise PackError(f"{self.folder}: a pack without texts.arrow (incomplete, or from an older datakit); "
                            "rebuild it with `datakit bench build`")
        self.texts = pa.ipc.open_file(pa.memory_map(str(arrow))).read_all()
        bp = self.folder / "boilerplate.npy"
        self.boilerplate = np.load(bp) if bp.exists() else np.zeros(0, np.uint64)
        self.sig = np.load(self.folder / "signatures.npy", mmap_mode="r")
        self.exact = np.load(self.folder / "exact.npy", mmap_mode="r")
        self.exact_rows = np.load(self.folder / "exact_rows.npy", mmap_mode="r")
        self.ngrams = np.load(self.folder / "ngrams.npy", mmap_mode="r")
        self.ngram_rows = np.load(self.folder / "ngram_rows.npy", mmap_mode="r")
        self._buckets: dict[float, tuple[int, int, np.ndarray, np.ndarray]] = {}
        self._scratch: Path | None = None

    @property
    def name(self) -> str:
        return self.folder.name

    def buckets(self, threshold: float) -> tuple[int, int, np.ndarray, np.ndarray]:
        """(bands, rows, sorted band hashes (bands, n), their pack rows (bands, n)) for a threshold: memmaps in a
        scratch folder, made BUCKET_CHUNK signatures and then one band at a time."""
        if threshold not in self._buckets:
            if self._scratch is None:
                self._scratch = Path(tempfile.mkdtemp(prefix="datakit-pack-"))
                weakref.finalize(self, shutil.rmtree, self._scratch, True)
            bands, rows = mh.recall_bands(threshold, self.params.num_perm)
            n = len(self.sig)
            folder = self._scratch / f"t{threshold}"
            folder.mkdir()
            unsorted = np.lib.format.open_memmap(folder / "bands.npy", "w+", np.uint64, (bands, n))
            for start in range(0, n, BUCKET_CHUNK):
                sig = np.asarray(self.sig[start:start + BUCKET_CHUNK])
                bh = mh.band_hashes(sig, bands, rows)
                bh[mh.empty_rows(sig)] = 0  # empty texts never match: 0 is reserved below
                unsorted[:, start:start + len(sig)] = bh.T
            keys = np.lib.format.open_memmap(folder / "keys.npy", "w+", np.uint64, (bands, n))
            owners = np.lib.format.open_memmap(folder / "owners.npy", "w+", np.int64, (bands, n))
            for b in range(bands):
                band = np.asarray(unsorted[b])
                order = np.argsort(band, kind="stable")
                keys[b], owners[b] = band[order], order
            keys.flush(), owners.flush()
            del unsorted, keys, owners
            (folder / "bands.npy").unlink()
            self._buckets[threshold] = (bands, rows, np.load(folder / "keys.npy", mmap_mode="r"),
                                        np.load(folder / "owners.npy", mmap_mode="r"))
        return self._buckets[threshold]

    def take(self, rows: np.ndarray, columns: list[str]) -> pa.Table:
        """Some pack rows, in the order of `rows`, taken chunk by chunk: Arrow's take on a chunked column joins
        every chunk first, which would copy the whole memory-mapped text column into memory."""
        rows = np.asarray(rows, np.int64)
        table = self.texts.select(columns)
        batches = table.to_batches()
        bounds = np.cumsum([0] + [b.num_rows for b in batches])
        which = np.searchsorted(bounds, rows, side="right") - 1
        order = np.argsort(which, kind="stable")
        parts = [batches[c].take(pa.array(rows[order][which[order] == c] - bounds[c])) for c in np.unique(which)]
        if not parts:
            return table.schema.empty_table()
        inverse = np.empty(len(rows), np.int64)
        inverse[order] = np.arange(len(rows))
        return pa.Table.from_batches(parts, table.schema).combine_chunks().take(pa.array(inverse))

    def shingle_sets(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The shingle sets (`minhash.shingle_sets` layout, in the order of `rows`) of some pack texts: only
        the candidates of a batch are shingled, so a pack carries no sets of its own."""
        texts = self.take(rows, ["text"]).column("text")
        h, doc = mh.shingle(texts, self.params.minhash())
        return mh.shingle_sets(h, doc, len(rows))

    def task_of(self, rows: np.ndarray) -> list[tuple[str, str, str, str]]:
        """(task, split, field, text) of pack rows."""
        sub = self.take(rows, ["task", "split", "field", "text"])
        return list(zip(*(sub.column(c).to_pylist() for c in ("task", "split", "field", "text"))))


def lookup_sorted(sorted_keys: np.ndarray, owners: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (query index, owner) with sorted_keys[j] == queries[i]; vectorised range expansion."""
    left = np.searchsorted(sorted_keys, queries, side="left")
    right = np.searchsorted(sorted_keys, queries, side="right")
    counts = right - left
    q = np.repeat(np.arange(len(queries)), counts)
    if len(q) == 0:
        return q, np.zeros(0, np.int64)
    offsets = np.arange(len(q)) - np.repeat(np.cumsum(counts) - counts, counts)
    return q, np.asarray(owners)[np.repeat(left, counts) + offsets]
