"""Our evaluation numbers against references outside our code, on real public data (../shared/data; CI has it):
the packaged all-MiniLM-L6-v2 gives MTEB's published scores, and retrieval's nDCG@10 equals a ranking computed
without mteb (sentence-transformers encode, exact top-k in numpy) scored by pytrec_eval."""
import json

import numpy as np

from tests.conftest import ROOT, write

REFERENCE_TASKS = ROOT / "benchmarks" / "recipes" / "reference-tasks.yaml"
PUBLISHED = {"STSBenchmark": (0.82032, 0.001), "Banking77Classification": (0.8004, 0.01)}  # MTEB leaderboard


def test_minilm_gives_mtebs_published_scores_on_stsb_and_banking77(shared_data, tmp_path):
    from trainer.eval import EvalRequest, evaluate_models

    [summary] = evaluate_models(EvalRequest(models=["embedded-minilm"], out=str(tmp_path / "out"),
                                            tasks_file=str(REFERENCE_TASKS)), log=lambda _: None)
    got = {o.task: o.value for o in summary.outcomes}
    for task, (published, tolerance) in PUBLISHED.items():
        assert abs(got[task] - published) <= tolerance, (task, got[task], published)


def _trimmed_scifact(source, folder, extra_docs: int = 150):
    """The SciFact test queries that have qrels and their query text, their relevant documents and `extra_docs`
    others (the first in corpus order): a small BEIR folder, the same for both sides of the comparison."""
    import gzip

    qrels: dict[str, dict[str, int]] = {}
    for line in (source / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        qrels.setdefault(q, {})[d] = int(s)
    queries = {r["_id"]: r for r in map(json.loads, (source / "queries.jsonl").read_text().splitlines())}
    qrels = {q: v for q, v in qrels.items() if q in queries}
    wanted = {d for v in qrels.values() for d in v}
    docs = []
    with gzip.open(source / "corpus.jsonl.gz", "rt") as fh:
        for line in fh:
            doc = json.loads(line)
            if doc["_id"] in wanted or len(docs) < len(wanted) + extra_docs:
                docs.append(doc)
    write(folder / "corpus.jsonl", "".join(json.dumps(d) + "\n" for d in docs))
    write(folder / "queries.jsonl", "".join(json.dumps(queries[q]) + "\n" for q in qrels))
    write(folder / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{s}\n" for q, v in qrels.items() for d, s in v.items()))
    return qrels, [queries[q] for q in qrels], docs


def test_retrieval_ndcg_equals_an_independent_ranking_scored_by_pytrec_eval(shared_data, tmp_path):
    import pytrec_eval
    from sentence_transformers import SentenceTransformer

    from trainer.config import resolve_name
    from trainer.eval import EvalRequest, evaluate_models

    qrels, queries, docs = _trimmed_scifact(shared_data / "scifact" / "beir", tmp_path / "scifact")
    tasks = write(tmp_path / "tasks.yaml", "tasks:\n  - {name: SciFact-trim, type: retrieval, beir: scifact}\n")
    [summary] = evaluate_models(EvalRequest(models=["embedded-minilm"], out=str(tmp_path / "out"),
                                            tasks_file=str(tasks)), log=lambda _: None)
    [ours] = [o.value for o in summary.outcomes if o.task == "SciFact-trim"]

    # the reference: no mteb. A document is its title and text joined (as MTEB defines it), a query its text
    model = SentenceTransformer(resolve_name("embedded-minilm")[0], device="cpu")
    q = model.encode([x["text"] for x in queries], normalize_embeddings=True, convert_to_numpy=True)
    d = model.encode([(x.get("title", "") + " " + x["text"]).strip() if x.get("title") else x["text"] for x in docs],
                     normalize_embeddings=True, convert_to_numpy=True)
    scores = q @ d.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :100]
    run = {x["_id"]: {docs[j]["_id"]: float(scores[i, j]) for j in top[i]} for i, x in enumerate(queries)}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
    reference = float(np.mean([r["ndcg_cut_10"] for r in per_query.values()]))
    assert len(per_query) == len(qrels) > 200 and 0.3 < reference < 0.9
    assert abs(ours - reference) <= 1e-6, (ours, reference)
