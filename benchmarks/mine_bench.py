"""Hard-negative mining on real labelled retrieval data: speed against calling sentence-transformers and
faiss directly, and the false-negative rate with and without the positive-aware guard.

Data: WikiQA test (../shared/data/wikiqa): each question with the sentences of its Wikipedia summary, the
answering ones labelled 1. As in real corpora, labels are incomplete: each record keeps only the question's
first labelled answer; the pool is every sentence. A mined negative is a false negative when WikiQA labels
it as an answer to the question.

    python benchmarks/mine_bench.py [--train]   (--train adds the train split's sentences to the pool)
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def load(train: bool) -> tuple[list[dict], list[str], dict[str, set[str]]]:
    rows = []
    for split in ("test", "train") if train else ("test",):
        lines = (SHARED / "wikiqa" / f"WikiQA-{split}.tsv").read_text(encoding="utf-8").splitlines()
        header = lines[0].split("\t")
        for line in lines[1:]:
            parts = line.split("\t")
            if len(parts) == len(header):
                rows.append(dict(zip(header, parts)))
            elif len(parts) == 7:  # the 13 train lines in the test file's layout
                rows.append({"Question": parts[1], "Sentence": parts[5], "Label": parts[6], "split": split})
    relevant: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        if r["Label"] == "1":
            relevant[r["Question"]].add(r["Sentence"])
    records, seen = [], set()
    for r in rows:
        q = r["Question"]
        if r["Label"] == "1" and q not in seen:
            seen.add(q)
            records.append({"query": q, "pos": [r["Sentence"]], "neg": []})
    pool = list(dict.fromkeys(r["Sentence"] for r in rows))
    return records, pool, relevant


def direct(pool: list[str], queries: list[str]) -> float:
    """sentence-transformers encode + faiss exact search, called by hand."""
    import faiss
    from sentence_transformers import SentenceTransformer

    from datakit.engines.embed import resolve_model

    model = SentenceTransformer(resolve_model("all-MiniLM-L6-v2"))
    model.encode(["warm up"])
    t = time.time()
    pv = model.encode(pool, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    qv = model.encode(queries, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    index = faiss.IndexFlatIP(pv.shape[1])
    index.add(pv)
    index.search(qv, 30)
    return time.time() - t


def ours(pool: list[str], queries: list[str], cache_dir: Path, use_cache: bool) -> float:
    from datakit.engines.embed import Embedder
    from datakit.engines.vectorsearch import VectorSearch

    emb = Embedder(cache_dir=cache_dir, use_cache=use_cache)
    emb.model.encode(["warm up"])
    t = time.time()
    pv = emb.encode(pool)
    qv = emb.encode(queries)
    VectorSearch(pv).search(qv, 30)
    return time.time() - t


def false_negatives(work: Path, records: list[dict], pool: list[str], relevant: dict[str, set[str]], guard: str):
    from datakit.pipeline import build
    from datakit.recipe import load_recipe
    from datakit.manifest import read_shards

    (work / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (work / "pool.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in pool))
    (work / "recipe.yaml").write_text(
        "name: mine\nsources: [{name: wikiqa, path: records.jsonl, adapter: retrieval, "
        "columns: {positive: pos, negatives: neg}}]\n"
        f"steps: [{{type: mine_negatives, guard: {guard}, negatives: 4, extra_pool: [pool.jsonl], "
        f"cache_dir: {work / 'cache'}}}]\n")
    t = time.time()
    out = build(load_recipe(work / "recipe.yaml"), work / f"out-{guard}", force=True)
    secs = time.time() - t
    mined = fn = 0
    for r in read_shards(out.out_dir, "retrieval").to_pylist():
        mined += len(r["negatives"])
        fn += sum(n in relevant[r["query"]] for n in r["negatives"])
    possible = sum(len(relevant[r["query"]]) - 1 for r in records)
    return mined, fn, possible, secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    if not SHARED.exists():
        sys.exit("needs ../shared/data")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mine_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    records, pool, relevant = load(args.train)
    queries = [r["query"] for r in records]
    t_direct = min(direct(pool, queries) for _ in range(2))
    t_ours = min(ours(pool, queries, work / "speed-cache", use_cache=False) for _ in range(2))
    ours(pool, queries, work / "speed-cache2", use_cache=True)
    t_warm = ours(pool, queries, work / "speed-cache2", use_cache=True)
    print(f"\nWikiQA {'test+train' if args.train else 'test'}: {len(records):,} queries, pool {len(pool):,} sentences, "
          "all-MiniLM-L6-v2 on CPU, exact inner-product search, top 30")
    print("| path | seconds | vs direct |")
    print("|---|---:|---:|")
    print(f"| sentence-transformers encode + faiss IndexFlatIP, by hand | {t_direct:.1f} | 1.00 |")
    print(f"| datakit Embedder + VectorSearch (cache off) | {t_ours:.1f} | {t_ours / t_direct:.2f} |")
    print(f"| datakit, warm embedding cache | {t_warm:.2f} | {t_warm / t_direct:.2f} |")
    print("\n| guard | mined negatives | false negatives (labelled answers) | FN rate | FN among the questions' other answers | step s |")
    print("|---|---:|---:|---:|---:|---:|")
    for guard in ("none", "perc_pos", "margin"):
        mined, fn, possible, secs = false_negatives(work, records, pool, relevant, guard)
        print(f"| {guard} | {mined:,} | {fn} | {fn / max(mined, 1):.4f} | {fn} of {possible} | {secs:.1f} |")


if __name__ == "__main__":
    main()
