"""Near-duplicate decisions by true Jaccard band (issue #19): are all pairs at or above the threshold found, and
none below it flagged? For `dedup` and for `decontaminate`, on English and Chinese short texts.

Texts: English questions and sentences (WikiQA, STS-B) and Chinese sentences (Chinese STS-B) from
../shared/data, each with one edited copy (words or characters dropped, inserted, replaced, swapped), so true
Jaccard spreads over 0.6-1.0; the sources' own near-duplicates count too. The truth is exhaustive and
independent of our hashing: every pair's Jaccard over Python sets of the README's shingles (normalised text,
words, or character bigrams for CJK text), through a sparse matrix product.

- dedup: all texts of a language against each other, as the dedup step decides (recall bands, every pair of a
  bucket, exact verification), against what it did before (balanced bands 9 x 13 at 0.8, a star per bucket,
  the signature's estimate). Pairs are counted before clustering.
- decontaminate: the original texts as the benchmark pack, the edited copies as training records, through the
  real step (`match: [minhash]`, action flag); a record's truth is its best Jaccard against the pack.

    python benchmarks/neardup_bench.py [--n 4000]
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
THRESHOLD = 0.8
BANDS = [(0.7, 0.8), (0.8, 0.85), (0.85, 0.9), (0.9, 1.01)]
_CJK = re.compile(r"[\u4e00-\u9fff\u3040-\u30ff\uac00-\ud7af]")


def english(n: int, rng: random.Random) -> list[str]:
    out = []
    for name in ("WikiQA-train.tsv", "WikiQA-test.tsv"):
        for line in (SHARED / "wikiqa" / name).read_text(encoding="utf-8").splitlines()[1:]:
            out.append(line.split("\t")[1] if name.endswith("test.tsv") else line.split("\t")[0])
    for line in (SHARED / "stsb" / "sts-test.csv").read_text(encoding="utf-8").splitlines():
        out += line.split("\t")[5:7]
    out = [t for t in dict.fromkeys(out) if 5 <= len(t.split()) <= 25]
    rng.shuffle(out)
    return out[:n]


def chinese(n: int, rng: random.Random) -> list[str]:
    out = []
    for name in ("STS-B.train.data", "STS-B.valid.data", "STS-B.test.data"):
        for line in (SHARED / "text2vec_zh" / "STS-B" / name).read_text(encoding="utf-8").splitlines():
            out += line.split("\t")[:2]
    out = [t for t in dict.fromkeys(out) if 8 <= len(t) <= 40]
    rng.shuffle(out)
    return out[:n]


def edit(text: str, rng: random.Random, vocab: list[str], cjk: bool) -> str:
    """One to three random edits of words (or characters, for Chinese)."""
    toks = list(text) if cjk else text.split()
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
        op = rng.choice(["drop", "insert", "replace", "swap"])
        i = rng.randrange(len(toks))
        if op == "drop" and len(toks) > 3:
            toks.pop(i)
        elif op == "insert":
            toks.insert(i, rng.choice(vocab))
        elif op == "replace":
            toks[i] = rng.choice(vocab)
        elif i + 1 < len(toks):
            toks[i], toks[i + 1] = toks[i + 1], toks[i]
    return ("" if cjk else " ").join(toks)


def shingle_sets_py(texts: list[str]) -> list[set[str]]:
    """The README's definition in plain Python (normalisation shared: it is the definition's first step)."""
    from datakit.minhash import normalize

    out = []
    for norm in normalize(pa.array(texts)).to_pylist():
        chars = norm.replace(" ", "")
        if chars and len(_CJK.findall(chars)) >= 0.3 * len(chars):
            out.append({chars[i: i + 2] for i in range(len(chars) - 1)} or {chars})
        else:
            out.append(set(norm.split()))
    return out


def true_pairs(sets_a: list[set[str]], sets_b: list[set[str]] | None = None, low: float = 0.6) -> dict:
    """{(i, j): J} for every pair with J >= low (i < j when comparing a set with itself), exhaustively."""
    from scipy.sparse import csr_matrix

    same = sets_b is None
    sets_b = sets_a if same else sets_b
    vocab: dict[str, int] = {}
    for s in sets_a + sets_b:
        for x in s:
            vocab.setdefault(x, len(vocab))

    def matrix(sets: list[set[str]]):
        rows = np.repeat(np.arange(len(sets)), [len(s) for s in sets])
        cols = np.array([vocab[x] for s in sets for x in s], np.int64)
        return csr_matrix((np.ones(len(cols), np.int32), (rows, cols)), shape=(len(sets), len(vocab)))

    a, b = matrix(sets_a), matrix(sets_b)
    size_a, size_b = np.diff(a.indptr), np.diff(b.indptr)
    out = {}
    for lo in range(0, a.shape[0], 1000):
        inter = (a[lo: lo + 1000] @ b.T).tocoo()
        i, j, k = inter.row + lo, inter.col, inter.data
        jac = k / (size_a[i] + size_b[j] - k)
        keep = jac >= low
        if same:
            keep &= i < j
        out.update({(int(x), int(y)): float(z) for x, y, z in zip(i[keep], j[keep], jac[keep])})
    return out


def engine_pairs(texts: list[str], mode: str) -> tuple[set[tuple[int, int]], int]:
    """Pairs the dedup engine flags: `after` (recall bands, every pair of a bucket, exact Jaccard) or `before`
    (balanced bands, a star per bucket, signature estimate)."""
    import duckdb

    from datakit import minhash as mh

    cfg = mh.MinHashConfig()
    norm = mh.normalize(pa.array(texts))
    h, d = mh.shingle(norm, cfg, normalized=True)
    sig = mh.signatures_from_shingles(h, d, len(texts), cfg)
    bands, rows = mh.recall_bands(THRESHOLD, cfg.num_perm) if mode == "after" else mh.optimal_bands(THRESHOLD, cfg.num_perm)
    bh = mh.band_hashes(sig, bands, rows)
    live = np.nonzero(~mh.empty_rows(sig))[0]
    con = duckdb.connect()
    con.register("b", pa.table({"doc": np.repeat(live, bands), "band": np.tile(np.arange(bands), len(live)),
                                "h": bh[live].reshape(-1)}))
    # before: each bucket linked its smallest doc to the others only (all_pairs_up_to=0)
    cand = mh.candidate_pairs(con, "SELECT * FROM b", all_pairs_up_to=256 if mode == "after" else 0)
    exact = mh.hash_strings(norm)
    if mode == "after":
        kept, _ = mh.verify_exact(cand, mh.shingle_sets(h, d, len(texts)), threshold=THRESHOLD)
    else:
        kept, _ = mh.verify_pairs(cand, sig, threshold=THRESHOLD)
    pairs = {(int(a), int(b)) for a, b in kept}
    order = np.argsort(exact, kind="stable")  # the exact pass: equal normalised texts
    for x, y in zip(order[:-1], order[1:]):
        if exact[x] == exact[y]:
            pairs.add((int(min(x, y)), int(max(x, y))))
    return pairs, len(cand)


def band_table(truth: dict, flagged: set, label: str) -> list[str]:
    lines = []
    for lo, hi in BANDS:
        in_band = [p for p, j in truth.items() if lo <= j < hi]
        found = sum(p in flagged for p in in_band)
        name = f"[{lo}, {min(hi, 1.0)}{')' if hi < 1 else ']'}"
        if lo < THRESHOLD:
            lines.append(f"| {label} | {name} | {len(in_band)} | {found} flagged (should be 0) | |")
        else:
            lines.append(f"| {label} | {name} | {len(in_band)} | {found} | {found / max(len(in_band), 1):.4f} |")
    false = [p for p in flagged if truth.get(p, 0.0) < THRESHOLD]
    precision = 1 - len(false) / max(len(flagged), 1)
    lines.append(f"| {label} | all flags | {len(flagged)} | {len(false)} below the threshold | precision {precision:.4f} |")
    return lines


def dedup_rows(name: str, texts: list[str]) -> list[str]:
    sets = shingle_sets_py(texts)
    truth = true_pairs(sets)
    rows = []
    for mode in ("before", "after"):
        flagged, cands = engine_pairs(texts, mode)
        rows += band_table(truth, flagged, f"{name}, {mode} ({cands:,} candidates)")
    return rows


def decontam_rows(name: str, bench: list[str], train: list[str], work: Path) -> list[str]:
    """The real decontaminate step: bench texts as the pack, training texts as classification records."""
    from datakit.query import connect
    from datakit.packs import build_pack
    from datakit.pipeline import build
    from datakit.recipe import load_recipe

    build_pack([("bench", "test", "text", bench)], work / "pack")
    with open(work / "train.jsonl", "w", encoding="utf-8") as fh:
        for i, t in enumerate(train):
            fh.write(json.dumps({"text": t, "label": str(i)}, ensure_ascii=False) + "\n")
    (work / "recipe.yaml").write_text("name: d\nsources: [{name: t, path: train.jsonl, adapter: classification}]\n"
                                      "steps: [{type: decontaminate, packs: [pack], match: [minhash], action: flag}]\n")
    result = build(load_recipe(work / "recipe.yaml"), work / "out", force=True)
    con = connect(work / "out")
    flagged_ids = {int(r[0]) for r in con.execute(
        "SELECT label FROM classification WHERE list_contains([e.step FOR e IN lineage.events], 'decontaminate')"
    ).fetchall()}
    best: dict[int, float] = {}
    for (i, _), j in true_pairs(shingle_sets_py(train), shingle_sets_py(bench)).items():
        best[i] = max(best.get(i, 0.0), j)
    truth = {(i, 0): j for i, j in best.items()}
    c = result.manifest["contamination"]
    label = f"{name} ({c['minhash_candidates']:,} candidates, {c['minhash_verified']:,} held)"
    return band_table(truth, {(i, 0) for i in flagged_ids}, label)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4000, help="original texts per language")
    args = ap.parse_args()
    if not SHARED.exists():
        sys.exit("needs ../shared/data")
    rng = random.Random(7)
    work = Path(tempfile.mkdtemp(prefix="neardup_"))
    langs = {"English": english(args.n, rng), "Chinese": chinese(args.n, rng)}
    print("| engine | true Jaccard | pairs | found | recall |\n|---|---|---:|---:|---:|")
    copies = {}
    for name, texts in langs.items():
        cjk = name == "Chinese"
        vocab = [c for t in texts for c in (t if cjk else t.split())]
        copies[name] = [edit(t, rng, vocab, cjk) for t in texts]
        for line in dedup_rows(f"dedup {name}", texts + copies[name]):
            print(line)
    for name, texts in langs.items():
        (work / name).mkdir()
        for line in decontam_rows(f"decontaminate {name}", texts, copies[name], work / name):
            print(line)


if __name__ == "__main__":
    main()
