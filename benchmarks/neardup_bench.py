"""Near-duplicate decisions by true Jaccard band (issue #19): are all pairs at or above the threshold found, and
none below it flagged? For `dedup` and for `decontaminate`, on English and Chinese short texts.

Texts: English questions and sentences (WikiQA, STS-B) and Chinese sentences (Chinese STS-B) from
../shared/data, each with one edited copy (words or characters dropped, inserted, replaced, swapped), so true
Jaccard spreads over 0.6-1.0; the sources' own near-duplicates count too. The truth is exhaustive and
independent of our hashing: every pair's Jaccard over Python sets of the README's shingles (normalised text,
words, or character bigrams for CJK text), through a sparse matrix product.

- dedup: through the real `dedup` step (`datakit build` of a recipe), on three record kinds: single texts
  (classification records), STS pairs (both sides edited; a pair's sides compared in either order) and retrieval
  records (WikiQA question + answer sentence, both edited). A record pair's truth is its smallest side Jaccard
  (pairs: of the better order), as the step decides. A true pair is found when the step kept at most one of its
  two records; a record dropped without any partner at J >= 0.8 is a wrong removal.
- decontaminate: the original texts as the benchmark pack, the edited copies as training records, through the
  real step (`match: [minhash]`, action flag); a record's truth is its best Jaccard against the pack.

    python benchmarks/neardup_bench.py [--n 4000]

Exits 1 when a true pair at J >= 0.8 is missed (recall < 0.99 in a band), a record is removed wrongly, or a
record below the threshold is flagged.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
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
            out.append(line.split("\t")[1])
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
    from datakit.engines.minhash import normalize

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


def band_table(truth: dict, flagged: set, label: str) -> tuple[list[str], bool]:
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
    recalls = [sum(p in flagged for p, j in truth.items() if lo <= j < hi) / max(1, sum(lo <= j < hi for j in truth.values()))
               for lo, hi in BANDS if lo >= THRESHOLD]
    return lines, not false and min(recalls) >= 0.99


def english_pairs(n: int, rng: random.Random) -> list[tuple[str, str]]:
    rows = [tuple(line.split("\t")[5:7]) for line in
            (SHARED / "stsb" / "sts-test.csv").read_text(encoding="utf-8").splitlines()]
    rows += [tuple(line.split("\t")[5:7]) for line in
             (SHARED / "stsb" / "sts-train.csv").read_text(encoding="utf-8").splitlines()]
    rows = [r for r in dict.fromkeys(rows) if len(r) == 2 and all(3 <= len(t.split()) <= 30 for t in r)]
    rng.shuffle(rows)
    return rows[:n]


def chinese_pairs(n: int, rng: random.Random) -> list[tuple[str, str]]:
    rows = []
    for name in ("STS-B.train.data", "STS-B.valid.data", "STS-B.test.data"):
        for line in (SHARED / "text2vec_zh" / "STS-B" / name).read_text(encoding="utf-8").splitlines():
            rows.append(tuple(line.split("\t")[:2]))
    rows = [r for r in dict.fromkeys(rows) if len(r) == 2 and all(6 <= len(t) <= 40 for t in r)]
    rng.shuffle(rows)
    return rows[:n]


def question_answers(n: int, rng: random.Random) -> list[tuple[str, str]]:
    rows = []
    for name in ("WikiQA-train.tsv", "WikiQA-test.tsv"):
        for line in (SHARED / "wikiqa" / name).read_text(encoding="utf-8").splitlines()[1:]:
            cols = line.split("\t")
            rows.append((cols[1], cols[3]))
    rows = [r for r in dict.fromkeys(rows) if 4 <= len(r[0].split()) and 5 <= len(r[1].split()) <= 40]
    rng.shuffle(rows)
    return rows[:n]


KINDS = {  # record kind: (shard, its text fields, source adapter, the source's columns for the fields)
    "text": ("classification", ["text"], "classification", ["text"]),
    "pair": ("pair", ["text_a", "text_b"], "sts", ["sentence1", "sentence2"]),
    "retrieval": ("retrieval", ["query", "positive"], "qa", ["question", "answer"]),
}


def record_truth(kind: str, records: list[tuple[str, ...]], low: float = 0.7) -> dict:
    """{(i, j): J} for record pairs i < j whose every side reaches `low`; J is the smallest side Jaccard (pairs:
    of the better order, text_a against text_b of the other record and back), as the dedup step decides."""
    sides = [shingle_sets_py([r[f] for r in records]) for f in range(len(records[0]))]
    per_side = [true_pairs(s, low=low) for s in sides]
    truth = {p: min(d.get(p, 0.0) for d in per_side) for p in set.intersection(*(set(d) for d in per_side))}
    if kind == "pair":
        cross = true_pairs(sides[0], sides[1], low=low)  # (i, j): text_a of i against text_b of j
        for (i, j), jab in cross.items():
            a, b = min(i, j), max(i, j)
            if a != b and (j, i) in cross:
                crossed = min(jab, cross[(j, i)])
                if crossed > truth.get((a, b), 0.0):
                    truth[(a, b)] = crossed
    return truth


def dedup_rows(name: str, kind: str, records: list[tuple[str, ...]], work: Path) -> tuple[list[str], bool]:
    """The real dedup step on `records` (originals, then their edited copies); (table lines, target met)."""
    from datakit.manifest import read_shards
    from datakit.pipeline import build
    from datakit.recipe import load_recipe

    shard, fields, adapter, columns = KINDS[kind]
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "data.jsonl", "w", encoding="utf-8") as fh:
        for r in records:
            row = dict(zip(columns, r))
            row.update({"label": "q"} if kind == "text" else {"score": 3.0} if kind == "pair" else {})
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    (work / "recipe.yaml").write_text(f"name: d\nsources: [{{name: d, path: data.jsonl, adapter: {adapter}}}]\n"
                                      f"steps: [{{type: dedup, threshold: {THRESHOLD}, kinds: [{shard}]}}]\n")
    t0 = time.perf_counter()
    result = build(load_recipe(work / "recipe.yaml"), work / "out", force=True)
    seconds = time.perf_counter() - t0
    first: dict[tuple[str, ...], int] = {}
    for i, r in enumerate(records):
        first.setdefault(r, i)
        if kind == "pair":
            first.setdefault((r[1], r[0]), i)
    kept_rows = read_shards(result.out_dir, shard).select(fields).to_pylist()
    kept = {first[tuple(row[f] for f in fields)] for row in kept_rows}
    truth = record_truth(kind, records)
    report = result.typed.steps[0].report
    dropped = set(range(len(records))) - kept
    partnered = {x for p, j in truth.items() if j >= THRESHOLD for x in p}
    wrong = dropped - partnered
    lines, ok = [], not wrong
    label = f"{name} ({report['candidate_pairs']:,} candidates, {report['verified_pairs']:,} held, {seconds:.1f} s)"
    for lo, hi in BANDS:
        in_band = [p for p, j in truth.items() if lo <= j < hi]
        band = f"[{lo}, {min(hi, 1.0)}{')' if hi < 1 else ']'}"
        if lo < THRESHOLD:
            both_gone = sum(p[0] in wrong or p[1] in wrong for p in in_band)
            lines.append(f"| {label} | {band} | {len(in_band)} | {both_gone} removed without a partner >= 0.8 "
                         f"(should be 0) | |")
        else:
            found = sum(not (p[0] in kept and p[1] in kept) for p in in_band)
            recall = found / max(len(in_band), 1)
            ok &= recall >= 0.99
            lines.append(f"| {label} | {band} | {len(in_band)} | {found} | {recall:.4f} |")
        label = name
    lines.append(f"| {name} | records dropped | {len(dropped)} | {len(wrong)} without a partner >= 0.8 | |")
    return lines, ok


def decontam_rows(name: str, bench: list[str], train: list[str], work: Path) -> list[str]:
    """The real decontaminate step: bench texts as the pack, training texts as classification records."""
    from datakit.query import connect
    from datakit.engines.packs import build_pack
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
    c = result.typed.contamination
    label = f"{name} ({c.minhash_candidates:,} candidates, {c.minhash_verified:,} held)"
    return band_table(truth, {(i, 0) for i in flagged_ids}, label)  # (lines, target met)


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
    copies, met = {}, True
    vocab = {name: [c for t in texts for c in (t if name == "Chinese" else t.split())] for name, texts in langs.items()}
    sets = {("text", "English"): [(t,) for t in langs["English"]], ("text", "Chinese"): [(t,) for t in langs["Chinese"]],
            ("pair", "English"): english_pairs(args.n, rng), ("pair", "Chinese"): chinese_pairs(args.n, rng),
            ("retrieval", "English"): question_answers(args.n, rng)}
    for (kind, lang), originals in sets.items():
        edited = [tuple(edit(t, rng, vocab[lang], lang == "Chinese") for t in r) for r in originals]
        if kind == "text":
            copies[lang] = [r[0] for r in edited]
        lines, ok = dedup_rows(f"dedup {kind} {lang}", kind, originals + edited, work / f"{kind}-{lang}")
        met &= ok
        print("\n".join(lines))
    for name, texts in langs.items():
        (work / name).mkdir()
        lines, ok = decontam_rows(f"decontaminate {name}", texts, copies[name], work / name)
        met &= ok
        print("\n".join(lines))
    print(f"\ntarget (recall >= 0.99 in every band at J >= {THRESHOLD}, no wrong removal): "
          f"{'met' if met else 'MISSED'}")
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
