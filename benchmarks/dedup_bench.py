"""Near-duplicate detection: datakit's MinHash/LSH engine against datasketch and rensa, on real text.

Documents: short real texts from ../shared/data (STS-B, WikiQA, SNLI, emotion, Banking77, SciFact), with
planted near-duplicates (case, punctuation, one word dropped, two words swapped, and combinations).
Every engine sees the same normalisation and the same shingles (word n-grams), so differences come from
the engines: datakit as its dedup step runs (LSH bands chosen for recall, candidates decided by exact Jaccard),
datasketch and rensa with their own balanced bands and signature estimates. Each engine runs in its own process (peak RSS of that process).

Columns: signature docs/s on one core (shingled tokens in, signatures out); end-to-end seconds and docs/s
(normalise, shingle, sign, band, candidates, verify, cluster) and peak RSS; mean absolute error of the
Jaccard estimates against exact Jaccard on 3,000 pairs; precision and recall on the planted duplicates.

    python benchmarks/dedup_bench.py --n 100000
    python benchmarks/dedup_bench.py --scale 1000000      # datakit only: 1M docs through `datakit build`
    python benchmarks/dedup_bench.py --whole-cli --n 100000   # 40-80-word docs, whole CLI against datasketch
    python benchmarks/dedup_bench.py --decontam           # decontamination precision/recall
    python benchmarks/dedup_bench.py --decontam-web       # ... on web text with wire boilerplate and markup

Targets, checked (exit 1 on a miss): the comparison: datakit's planted recall >= 0.95 and >= 20x datasketch end
to end (short texts, issue #28); --whole-cli: recall >= 0.95 and >= 10x datasketch on 40-80-word documents,
process launch to exit (median of 3 runs each, after one untimed); --scale: under 5 minutes per 1M
docs and peak RSS under 4 GiB; --decontam: recall and precision >= 0.95.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tests.lsh_reference: datasketch's band rule
from _measure import measure, timed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
THRESHOLD = 0.8
NUM_PERM = 128


# ------------------------------------------------------------------ data
def real_texts(include_sts: bool = True) -> list[str]:
    if not SHARED.exists():
        sys.exit("needs ../shared/data (real public text)")
    out: list[str] = []
    for name in ("sts-train.csv", "sts-dev.csv", "sts-test.csv") if include_sts else ():
        for line in (SHARED / "stsb" / name).read_text(encoding="utf-8").splitlines():
            out += line.split("\t")[5:7]
    for line in (SHARED / "wikiqa" / "WikiQA-train.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        out.append(line.split("\t")[-2])
    for line in (SHARED / "emotion" / "train.txt").read_text(encoding="utf-8").splitlines()[1:]:
        out.append(line.rsplit(";", 1)[0])
    with open(SHARED / "banking77" / "train.csv", newline="", encoding="utf-8") as fh:
        out += [r["text"] for r in csv.DictReader(fh)]
    for line in (SHARED / "snli_sample" / "snli_1.0_dev_head.jsonl").open(encoding="utf-8"):
        r = json.loads(line)
        out += [r["sentence1"], r["sentence2"]]
    with gzip.open(SHARED / "scifact" / "beir" / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            words = json.loads(line)["text"].split()
            out += [" ".join(words[i: i + 40]) for i in range(0, min(len(words), 200), 40)]
    seen, uniq = set(), []
    for t in out:
        t = t.strip()
        if len(t.split()) >= 4 and t.lower() not in seen:
            seen.add(t.lower())
            uniq.append(t)
    return uniq


def edit(text: str, rng: random.Random) -> tuple[str, str]:
    words = text.split()
    kind = rng.choice(["case", "punct", "drop", "swap", "case+drop", "punct+swap"])
    if "drop" in kind and len(words) >= 8:
        del words[rng.randrange(len(words))]
    if "swap" in kind and len(words) >= 8:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    out = " ".join(words)
    if "case" in kind:
        out = rng.choice([out.upper(), out.lower(), out.title()])
    if "punct" in kind:
        out = out.replace(",", "").replace(".", "") + rng.choice(["!!", " ?", "...", " :)"])
    return out, kind


def make_docs(n: int, planted_frac: float = 0.05, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """n docs: real texts plus planted edited copies; returns docs and (original, copy) index pairs."""
    rng = random.Random(seed)
    base = real_texts()
    n_copies = int(n * planted_frac)
    originals = base[: n - n_copies] if len(base) >= n - n_copies else base
    while len(originals) < n - n_copies:  # more docs than real texts: join two texts into a new one
        originals.append(rng.choice(base) + " " + rng.choice(base))
    docs = list(originals)
    pairs = []
    for _ in range(n_copies):
        i = rng.randrange(len(originals))
        docs.append(edit(originals[i], rng)[0])
        pairs.append((i, len(docs) - 1))
    return docs, np.array(pairs, np.int64)


# ------------------------------------------------------------------ shared pieces
def token_sets(docs: list[str], ngram: int) -> list[list[str]]:
    from datakit.engines.minhash import normalize

    out = []
    for text in normalize(pa.array(docs)).to_pylist():
        w = text.split()
        out.append([" ".join(w[i: i + ngram]) for i in range(max(1, len(w) - ngram + 1))] if w else [])
    return out


def clusters_from_pairs(pairs: np.ndarray, n: int) -> np.ndarray:
    from datakit.engines.minhash import components

    return components(pairs, n)


def band_candidates_numpy(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Candidate pairs from band buckets with numpy (the plain rensa pipeline's banding)."""
    out = []
    for b in range(bands):
        block = np.ascontiguousarray(sig[:, b * rows:(b + 1) * rows])
        keys = block.view(np.dtype((np.void, block.dtype.itemsize * rows))).ravel()
        order = np.argsort(keys, kind="stable")
        k = keys[order]
        start = np.r_[True, k[1:] != k[:-1]]
        group = np.cumsum(start) - 1
        first = order[np.r_[np.nonzero(start)[0]]][group]
        mask = first != order
        out.append(np.stack([first[mask], order[mask]], axis=1))
    pairs = np.concatenate(out) if out else np.zeros((0, 2), np.int64)
    return np.unique(np.sort(pairs, axis=1), axis=0) if len(pairs) else pairs


# ------------------------------------------------------------------ engines (each in its own process)
def run_datakit(docs: list[str], ngram: int) -> dict:
    import numba

    from datakit.engines import minhash as mh

    cfg = mh.MinHashConfig(num_perm=NUM_PERM, ngram=ngram, script="word")
    arr = pa.array(docs)
    mh.band_hashes(mh.signatures(arr[:10], cfg), 2, 2)  # compile the kernels outside the timings
    mh.pair_jaccard(np.zeros((1, 2), np.int64), mh.shingle_sets(*mh.shingle(arr[:2], cfg), 2))
    numba.set_num_threads(1)
    h, d = mh.shingle(arr, cfg)
    t = time.time()
    mh.signatures_from_shingles(h, d, len(docs), cfg)
    sign_one_core = time.time() - t
    t0 = time.time()  # end to end on one core too (numba held to one thread)
    norm = mh.normalize(arr)
    h, d = mh.shingle(norm, cfg, normalized=True)
    sig = mh.signatures_from_shingles(h, d, len(docs), cfg)
    sets = mh.shingle_sets(h, d, len(docs))
    bands, rows = mh.recall_bands(THRESHOLD, NUM_PERM)  # as the dedup step: recall first, exact verification
    bh = mh.band_hashes(sig, bands, rows)
    live = np.nonzero(~mh.empty_rows(sig))[0]
    from tests.lsh_reference import bucket_pairs  # the step's listing (run_pairs, split_bucket), in memory

    cand = bucket_pairs(bh[live], live)  # every pair of a bucket, big ones split by the next band
    verified, _ = mh.verify_exact(cand, sets, threshold=THRESHOLD)
    labels = mh.components(verified, len(docs))
    e2e = time.time() - t0
    return {"sign_one_core_s": sign_one_core, "e2e_s": e2e, "labels": labels, "sig": sig, "candidates": len(cand)}


def run_datasketch(docs: list[str], ngram: int) -> dict:
    from datasketch import MinHash, MinHashLSH

    t0 = time.time()
    tokens = token_sets(docs, ngram)
    shingle_s = time.time() - t0
    t = time.time()
    hashes = []
    for toks in tokens:
        m = MinHash(num_perm=NUM_PERM, seed=1)
        m.update_batch([x.encode() for x in toks])
        hashes.append(m)
    sign_s = time.time() - t
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    pairs = []
    for i, m in enumerate(hashes):
        for j in lsh.query(m):
            if hashes[j].jaccard(m) >= THRESHOLD:
                pairs.append((j, i))
        lsh.insert(i, m)
    labels = clusters_from_pairs(np.array(pairs, np.int64).reshape(-1, 2), len(docs))
    sig = np.stack([m.hashvalues for m in hashes]).astype(np.uint64)
    return {"sign_one_core_s": sign_s, "shingle_s": shingle_s, "e2e_s": time.time() - t0, "labels": labels, "sig": sig}


def run_rensa(docs: list[str], ngram: int) -> dict:
    from rensa import RMinHash

    from tests.lsh_reference import optimal_bands

    t0 = time.time()
    tokens = token_sets(docs, ngram)
    t = time.time()
    matrix = RMinHash.digest_matrix_from_token_sets(tokens, num_perm=NUM_PERM, seed=1)
    sign_s = time.time() - t
    sig = np.asarray(matrix.to_rows(), dtype=np.uint64)
    bands, rows = optimal_bands(THRESHOLD, NUM_PERM)
    cand = band_candidates_numpy(sig, bands, rows)
    est = (sig[cand[:, 0]] == sig[cand[:, 1]]).mean(axis=1) if len(cand) else np.zeros(0)
    verified = cand[est >= THRESHOLD]
    labels = clusters_from_pairs(verified, len(docs))
    return {"sign_one_core_s": sign_s, "e2e_s": time.time() - t0, "labels": labels, "sig": sig}


ENGINES = {"datakit": run_datakit, "datasketch": run_datasketch, "rensa": run_rensa}


def worker(engine: str, docs_path: Path, ngram: int, out: Path) -> None:
    docs = pq.read_table(docs_path).column("text").to_pylist()
    res = ENGINES[engine](docs, ngram)
    np.save(out.with_suffix(".labels.npy"), res.pop("labels"))
    np.save(out.with_suffix(".sig.npy"), res.pop("sig"))
    out.write_text(json.dumps(res))


# ------------------------------------------------------------------ scoring
def score(labels: np.ndarray, sig: np.ndarray, planted: np.ndarray, tokens: list[set], rng: random.Random) -> dict:
    recall = float(np.mean(labels[planted[:, 0]] == labels[planted[:, 1]])) if len(planted) else 0.0
    # predicted pairs: every cluster member with its cluster's root
    members = np.nonzero(labels != np.arange(len(labels)))[0]
    planted_set = {(int(a), int(b)) for a, b in planted}
    true = 0
    for m in members:
        r = int(labels[m])
        a, b = tokens[r], tokens[m]
        j = len(a & b) / len(a | b) if (a or b) else 0
        true += (r, int(m)) in planted_set or (int(m), r) in planted_set or j >= THRESHOLD - 0.05
    precision = true / len(members) if len(members) else 1.0
    # Jaccard estimate error on planted pairs and random pairs of one source
    pairs = [tuple(p) for p in planted[:1500]] + [(i, i + 1) for i in rng.sample(range(len(tokens) - 1), 1500)]
    err = []
    for a, b in pairs:
        ta, tb = tokens[a], tokens[b]
        if ta or tb:
            err.append(abs(len(ta & tb) / len(ta | tb) - float(np.mean(sig[a] == sig[b]))))
    return {"recall": recall, "precision": precision, "mae": float(np.mean(err)), "pairs": int(len(members))}


def compare(n: int, ngram: int, engines: list[str], work: Path) -> list[str]:
    docs, planted = make_docs(n)
    docs_path = work / "docs.parquet"
    pq.write_table(pa.table({"text": docs}), docs_path)
    tokens = [set(t) for t in token_sets(docs, ngram)]
    rng = random.Random(1)
    rows = []
    for engine in engines:
        out = work / f"{engine}.json"
        secs, peak, _ = measure([sys.executable, __file__, "--worker", engine, "--docs", str(docs_path),
                                 "--ngram", str(ngram), "--out", str(out)])
        res = json.loads(out.read_text())
        q = score(np.load(out.with_suffix(".labels.npy")), np.load(out.with_suffix(".sig.npy")), planted, tokens, rng)
        rows.append((engine, n / res["sign_one_core_s"], res["e2e_s"], n / res["e2e_s"], peak / 2**20, q))
    print(f"\n{n:,} docs ({len(planted):,} planted near-duplicates), word {ngram}-gram shingles, "
          f"num_perm {NUM_PERM}, threshold {THRESHOLD}")
    print("| engine | sign docs/s (1 core) | end-to-end s | end-to-end docs/s | peak RSS MiB | Jaccard MAE | precision | recall |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for engine, sign, e2e, rate, rss, q in rows:
        print(f"| {engine} | {sign:,.0f} | {e2e:.1f} | {rate:,.0f} | {rss:,.0f} | {q['mae']:.3f} | "
              f"{q['precision']:.3f} | {q['recall']:.3f} |")
    base = {r[0]: r for r in rows}
    missed = []
    if "datakit" in base:
        for other in ("datasketch", "rensa"):
            if other in base:
                print(f"datakit end to end: {base[other][2] / base['datakit'][2]:.1f}x {other}")
        if base["datakit"][5]["recall"] < 0.95:
            missed.append(f"planted recall {base['datakit'][5]['recall']:.3f} < 0.95")
        if "datasketch" in base and base["datasketch"][2] / base["datakit"][2] < 20:
            missed.append(f"{base['datasketch'][2] / base['datakit'][2]:.1f}x datasketch end to end < 20x")
    return missed


def dedup_recipe(work: Path, name: str, docs: list[str], step_options: str = "", more: str = "") -> Path:
    """`NAME.jsonl` (the docs as classification records) and `NAME.yaml`, a recipe with one dedup step."""
    with open(work / f"{name}.jsonl", "w", encoding="utf-8") as fh:
        for t in docs:
            fh.write(json.dumps({"text": t, "label": "x"}) + "\n")
    options = f"threshold: {THRESHOLD}" + (f", {step_options}" if step_options else "")
    recipe = work / f"{name}.yaml"
    recipe.write_text(f"name: {name}\nsources: [{{name: docs, path: {name}.jsonl, adapter: classification}}]\n"
                      f"steps: [{{type: dedup, {options}}}]\n{more}")
    return recipe


def scale(n: int, ngram: int, work: Path) -> list[str]:
    """1M short docs through the real pipeline: JSONL -> classification records -> dedup step -> shards."""
    docs, planted = make_docs(n, planted_frac=0.02)
    recipe = dedup_recipe(work, "docs", docs, f"ngram: {ngram}", "output: {shard_rows: 200000}\n")
    datakit = str(Path(sys.executable).parent / "datakit")
    secs, peak, _ = measure([datakit, "build", str(recipe), "--out", str(work / "out"), "--force", "-q"])
    m = json.loads((work / "out" / "manifest.json").read_text())
    print("\n| docs | wall s (read, adapt, dedup, write) | peak RSS MiB | exact dropped | near dropped | planted |")
    print("|---:|---:|---:|---:|---:|---:|")
    d = m["dropped"]["0:dedup"]
    print(f"| {n:,} | {secs:.0f} | {peak / 2**20:,.0f} | {d.get('exact_duplicate', 0):,} | "
          f"{d.get('near_duplicate', 0):,} | {len(planted):,} |")
    per_million = 1_000_000 / n
    missed = [f"{secs * per_million:.0f} s per 1M docs > 300"] if secs * per_million > 300 else []
    return missed + ([f"peak RSS {peak / 2**30:.1f} GiB >= 4"] if peak >= 4 * 2**30 else [])


def long_docs(n: int, planted_frac: float = 0.05, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """n documents of 40-80 words, each joined from random real sentences, and planted edited copies (as
    `make_docs`); returns docs and (original, copy) index pairs."""
    rng = random.Random(seed)
    base = real_texts()
    n_copies = int(n * planted_frac)
    docs = []
    for _ in range(n - n_copies):
        target, words = rng.randint(40, 80), []
        while len(words) < target:
            words += rng.choice(base).split()
        docs.append(" ".join(words[:target]))
    pairs = []
    for _ in range(n_copies):
        i = rng.randrange(n - n_copies)
        docs.append(edit(docs[i], rng)[0])
        pairs.append((i, len(docs) - 1))
    return docs, np.array(pairs, np.int64)


def datasketch_cli(docs_path: Path, out: Path) -> None:
    """The hand-made peer of `datakit build` with a dedup step: read JSON lines, MinHash each text's word set,
    query and insert into MinHashLSH, keep a text no kept text shares a bucket with, write JSON lines. (The
    cheap way: LSH candidates taken as duplicates, no estimate checked, so it is faster than `compare`'s.)"""
    import re

    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    with open(docs_path, encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            m = MinHash(num_perm=NUM_PERM, seed=1)
            m.update_batch([w.encode() for w in set(re.findall(r"\w+", json.loads(line)["text"].lower()))])
            if not lsh.query(m):
                lsh.insert(i, m)
                dst.write(line)


def whole_cli(n: int, work: Path, repeat: int = 3) -> list[str]:
    """40-80-word documents through the whole CLI (`datakit build`: read, adapt, dedup, write shards) against the
    datasketch script above, each in its own process, wall clock from launch to exit: the median of `repeat`
    runs of each, interleaved, each after an untimed run of the same engine (a single run of datakit's ~2.5 s
    varies by 0.3 s here), with the process's peak RSS as the kernel counts it (`_measure.timed`: nothing
    samples beside the timed run)."""
    from datakit.manifest import read_shards

    docs, planted = long_docs(n)
    recipe = dedup_recipe(work, "long", docs)
    docs_path = work / "long.jsonl"
    datakit = str(Path(sys.executable).parent / "datakit")
    dk = [datakit, "build", str(recipe), "--out", str(work / "long-out"), "--force", "-q"]
    ds = [sys.executable, __file__, "--worker", "datasketch-cli", "--docs", str(docs_path),
          "--out", str(work / "long-datasketch.jsonl")]
    dk_runs, ds_runs = [], []
    for _ in range(repeat):  # interleaved, so that a slower minute of the machine hits both
        for cmd, runs in ((dk, dk_runs), (ds, ds_runs)):
            # An untimed run of the same engine first: it warms the page cache and numba's kernel cache, and a
            # process started right after the other engine's exit pays the kernel's reclaim of that engine's
            # memory in its page faults (datakit: +0.25 s of system time after datasketch's 444 MiB, measured).
            timed(cmd)
            runs.append(timed(cmd))
    dk_s, ds_s = (float(np.median([r[0] for r in runs])) for runs in (dk_runs, ds_runs))
    dk_peak, ds_peak = (max(r[1] for r in runs) for runs in (dk_runs, ds_runs))
    index = {t: i for i, t in enumerate(docs)}
    kept_dk = {index[t] for t in read_shards(work / "long-out", "classification").column("text").to_pylist()}
    kept_ds = {index[json.loads(line)["text"]] for line in open(work / "long-datasketch.jsonl", encoding="utf-8")}
    report = json.loads((work / "long-out" / "dedup.json").read_text())
    print(f"\n{n:,} documents of 40-80 real words ({len(planted):,} planted near-copies), whole CLI, "
          f"threshold {THRESHOLD}, num_perm {NUM_PERM}; wall: median of {repeat} runs each "
          f"(datakit {', '.join(f'{r[0]:.2f}' for r in dk_runs)} s)")
    print("| engine | wall s (median) | docs/s | peak RSS MiB | kept | planted pairs found |")
    print("|---|---:|---:|---:|---:|---:|")
    recall = {}
    for name, secs, peak, kept in (("datakit build (dedup step)", dk_s, dk_peak, kept_dk),
                                   ("datasketch script", ds_s, ds_peak, kept_ds)):
        recall[name] = float(np.mean([not (a in kept and b in kept) for a, b in planted]))
        print(f"| {name} | {secs:.1f} | {n / secs:,.0f} | {peak / 2**20:,.0f} | {len(kept):,} | {recall[name]:.3f} |")
    speedup = ds_s / dk_s
    print(f"datakit: {speedup:.1f}x datasketch whole CLI")
    print(f"dedup step: {report['candidate_pairs']:,} candidate pairs, {report['verified_pairs']:,} verified; "
          "seconds per phase: " + ", ".join(f"{k} {v:.2f}" for k, v in report.get("seconds", {}).items()))
    missed = [f"{speedup:.1f}x datasketch < 10x"] if speedup < 10 else []
    if recall["datakit build (dedup step)"] < 0.95:
        missed.append(f"planted recall {recall['datakit build (dedup step)']:.3f} < 0.95")
    return missed


def decontam(work: Path) -> list[str]:
    """Planted near-copies of benchmark texts among real training text: precision and recall of the audit."""
    from datakit.query import connect
    from datakit.engines.packs import build_pack, texts_from_files
    from datakit.pipeline import build
    from datakit.recipe import load_recipe

    rng = random.Random(3)
    build_pack(texts_from_files([SHARED / "sts12_16", SHARED / "stsb" / "sts-test.csv", SHARED / "biosses" / "biosses.tsv"]),
               work / "pack")
    bench = pq.read_table(work / "pack" / "texts.parquet").column("text").to_pylist()
    bench_all = bench
    bench = [b for b in bench if len(b.split()) >= 8 and "StackExchange" not in b]
    train = [t for t in real_texts(include_sts=False) if t not in set(bench_all)]
    rng.shuffle(train)
    train = train[:50_000]
    planted = rng.sample(bench, 1000)
    rows = [{"text": t, "label": "train"} for t in train]
    for b in planted:
        rows.insert(rng.randrange(len(rows)), {"text": edit(b, rng)[0], "label": "planted"})
    with open(work / "train.jsonl", "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    (work / "recipe.yaml").write_text(
        "name: decontam\nsources: [{name: train, path: train.jsonl, adapter: classification}]\n"
        "steps: [{type: decontaminate, packs: [pack], action: flag}]\n")
    t = time.time()
    build(load_recipe(work / "recipe.yaml"), work / "out")
    secs = time.time() - t
    con = connect(work / "out")
    flagged = con.execute("SELECT label, text FROM classification WHERE "
                          "list_contains([e.step FOR e IN lineage.events], 'decontaminate')").fetchall()
    tp = sum(1 for label, _ in flagged if label == "planted")
    # a flagged training text that is not planted may still truly overlap a benchmark: check by exact Jaccard
    from datakit.engines.minhash import normalize

    bench_norm = normalize(pa.array(bench_all)).to_pylist()
    bench_sets = [set(x.split()) for x in bench_norm]
    grams = {" ".join(w[i: i + 13]) for x in bench_norm for w in [x.split()] for i in range(len(w) - 12)}
    real_overlap = 0
    for label, text in flagged:
        if label != "planted":
            norm = normalize(pa.array([text])).to_pylist()[0]
            s, w = set(norm.split()), norm.split()
            jac = max(len(s & b) / len(s | b) for b in bench_sets if b)
            shared = any(" ".join(w[i: i + 13]) in grams for i in range(len(w) - 12))
            real_overlap += jac >= THRESHOLD - 0.05 or shared
    precision = (tp + real_overlap) / len(flagged) if flagged else 1.0
    print(f"\ndecontamination: {len(train):,} real training texts (WikiQA, emotion, Banking77, SNLI, SciFact) + "
          f"1,000 planted near-copies of benchmark texts; pack: {len(bench_all):,} texts (STS12-16, STS-B test, "
          f"BIOSSES); {secs:.1f}s")
    print("| flagged | planted found (recall) | precision | flagged non-planted that truly overlap |")
    print("|---:|---:|---:|---:|")
    print(f"| {len(flagged):,} | {tp / 1000:.3f} | {precision:.3f} | {real_overlap} |")
    return [f"{name} {v:.3f} < 0.95" for name, v in (("recall", tp / 1000), ("precision", precision)) if v < 0.95]


CITIES = ["WASHINGTON", "NEW YORK", "LONDON", "TOKYO", "PARIS", "BERLIN", "SAN FRANCISCO", "MOSCOW"]
FOOTER = ("Copyright 2004 The Associated Press. All rights reserved. This material may not be published, "
          "broadcast, rewritten or redistributed.")
LINK = ('&lt;A HREF="http://www.investor.reuters.com/FullQuote.aspx?ticker={t}.N target=/stocks/quickinfo/fullquote"'
        '&gt;{t}.N&lt;/A&gt;')


def wire_article(sentences: list[str], rng: random.Random) -> str:
    """A news article as web text: a wire byline, real sentences, ticker link markup, the agency's footer.
    (Its content is the sentences alone.)"""
    agency = rng.choice(["Reuters", "AP"])
    body = list(sentences)
    if rng.random() < 0.5:  # a company with its quote link, as in AG News
        tick = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rng.choice([2, 3, 4])))
        body.insert(rng.randrange(len(body) + 1), f"Shares of the company ({LINK.format(t=tick)}) moved on the news.")
    text = f"{rng.choice(CITIES)} ({agency}) - " + " ".join(body)
    if agency == "AP" and rng.random() < 0.7:
        text += " " + FOOTER
    return text


def decontam_web(work: Path) -> None:
    """Web text with boilerplate: benchmark and training articles share wire bylines, ticker link markup and a
    copyright footer (a 17-word run); planted near-copies of benchmark articles must be found, and clean articles
    must not be flagged for the boilerplate they share."""
    from datakit.query import connect
    from datakit.engines.packs import PackParams, build_pack
    from datakit.pipeline import build
    from datakit.recipe import load_recipe

    rng = random.Random(5)
    sentences = [t for t in dict.fromkeys(real_texts()) if 6 <= len(t.split()) <= 30]
    rng.shuffle(sentences)
    articles, contents, i = [], [], 0
    while i + 6 < len(sentences) and len(articles) < 12_000:
        k = rng.choice([3, 4, 5, 6])
        articles.append(wire_article(sentences[i: i + k], rng))
        contents.append(" ".join(sentences[i: i + k]))
        i += k
    bench, clean = articles[:2_000], articles[2_000:]
    # the truth for clean articles: real sentences can overlap (STS-B pairs are near copies of each other), so
    # a clean article whose *content* shares a 13-word run with a benchmark article's content is contaminated
    # too; boilerplate is not content
    from datakit.engines.minhash import normalize

    def grams(text: str) -> set[str]:
        w = normalize(pa.array([text])).to_pylist()[0].split()
        return {" ".join(w[j: j + 13]) for j in range(len(w) - 12)}

    bench_grams = set().union(*(grams(c) for c in contents[:2_000]))
    overlapping = {k for k, c in enumerate(contents[2_000:]) if grams(c) & bench_grams}
    planted = rng.sample(bench, 500)
    rows = [{"text": t, "label": "overlap" if k in overlapping else "clean"} for k, t in enumerate(clean)]
    for b in planted:  # a near-copy: one word changed, the agency's markup kept
        words = b.split()
        words[rng.randrange(len(words))] = rng.choice(["however", "meanwhile", "reportedly"])
        rows.insert(rng.randrange(len(rows)), {"text": " ".join(words), "label": "planted"})
    with open(work / "train.jsonl", "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    print(f"\nweb text: {len(clean):,} clean wire articles + {len(planted)} planted near-copies of benchmark "
          f"articles; pack: {len(bench):,} benchmark articles; all share bylines, ticker link markup and footers")
    print(f"({len(overlapping)} clean articles truly share a 13-word run of content with a benchmark article)")
    print("| pack | detectors | flagged | planted found (recall) | content overlaps found | clean flagged | precision |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for label, params in (("boilerplate_df 5 (default)", PackParams()), ("no boilerplate filter", PackParams(boilerplate_df=0))):
        for match in (["ngram"], ["exact", "minhash", "ngram"]):
            pack = work / f"pack-{params.boilerplate_df}"
            build_pack([("bench", "test", "text", bench)], pack, params)
            (work / "recipe.yaml").write_text(
                "name: web\nsources: [{name: train, path: train.jsonl, adapter: classification}]\n"
                f"steps: [{{type: decontaminate, packs: [{pack.name}], match: {json.dumps(match)}, action: flag}}]\n")
            build(load_recipe(work / "recipe.yaml"), work / "out", force=True)
            flagged = connect(work / "out").execute(
                "SELECT label FROM classification WHERE "
                "list_contains([e.step FOR e IN lineage.events], 'decontaminate')").fetchall()
            tp = sum(1 for (lab,) in flagged if lab == "planted")
            real = sum(1 for (lab,) in flagged if lab == "overlap")
            fp = len(flagged) - tp - real
            print(f"| {label} | {'+'.join(match)} | {len(flagged):,} | {tp / len(planted):.3f} | "
                  f"{real}/{len(overlapping)} | {fp:,} | {(tp + real) / max(len(flagged), 1):.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--ngram", type=int, default=1)
    ap.add_argument("--engines", default="datakit,rensa,datasketch")
    ap.add_argument("--scale", type=int, default=0, help="run datakit alone on this many docs through `datakit build`")
    ap.add_argument("--decontam", action="store_true")
    ap.add_argument("--whole-cli", action="store_true", help="40-80-word documents: `datakit build` against a "
                    "datasketch script, whole processes")
    ap.add_argument("--decontam-web", action="store_true", help="decontamination on web text with boilerplate")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--docs", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "datasketch-cli":
        datasketch_cli(args.docs, args.out)
        return
    if args.worker:
        worker(args.worker, args.docs, args.ngram, args.out)
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="dedup_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    missed: list[str] = []
    if args.scale:
        missed = scale(args.scale, args.ngram, work)
    elif args.whole_cli:
        missed = whole_cli(args.n, work)
    elif args.decontam:
        missed = decontam(work)
    elif args.decontam_web:
        decontam_web(work)
        return
    else:
        missed = compare(args.n, args.ngram, args.engines.split(","), work)
    print("\ntargets: " + ("met" if not missed else "MISSED: " + "; ".join(missed)))
    if missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
