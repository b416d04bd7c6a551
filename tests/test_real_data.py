"""Build a corpus from the real public data in ../shared/data and check it against counts taken independently."""
import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from datakit.query import connect
from datakit.pipeline import build
from datakit.recipe import load_recipe
from tests.conftest import ROOT, require_shared_data


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    require_shared_data()
    out = tmp_path_factory.mktemp("real") / "out"
    return build(load_recipe(ROOT / "benchmarks" / "recipes" / "shared_corpus.yaml"), out)


def _lines(path: Path, sep: str = "\t") -> list[list[str]]:
    return [line.rstrip("\n").split(sep) for line in path.read_text(encoding="utf-8").splitlines()]


def test_counts_match_the_files(corpus, shared_data):
    counts, q = corpus.manifest["counts"], corpus.manifest["quarantined"]["by_dataset"]
    assert counts["pair"]["stsb_train"] == 2 * len(_lines(shared_data / "stsb/sts-train.csv"))
    dev = _lines(shared_data / "stsb/sts-dev.csv")
    assert counts["pair"]["stsb_dev_csv"] == 2 * sum(len(r) == 7 for r in dev)
    assert q["stsb_dev_csv"] == {"malformed_row": sum(len(r) != 7 for r in dev)}

    with open(shared_data / "banking77/train.csv", newline="", encoding="utf-8") as fh:
        assert counts["classification"]["banking77"] == sum(1 for _ in csv.DictReader(fh))
    assert counts["classification"]["emotion"] == len(_lines(shared_data / "emotion/train.txt")) - 1

    snli = [json.loads(line) for line in (shared_data / "snli_sample/snli_1.0_dev_head.jsonl").open()]
    labels = Counter(r["gold_label"] for r in snli)
    assert counts["pair"]["snli"] == 2 * (len(snli) - labels["-"])
    assert q["snli"] == {"bad_label": labels["-"]}

    bge = [json.loads(line) for line in (shared_data / "text2vec_zh/bge_finetune_data.jsonl").open()]
    assert counts["retrieval"]["bge_zh"] == sum(len(r["pos"]) for r in bge)

    wikiqa = [r for r in _lines(shared_data / "wikiqa/WikiQA-train.tsv")[1:] if len(r) == 5]
    assert counts["retrieval"]["wikiqa"] == sum(r[4] == "1" for r in wikiqa)  # one record per answer sentence


def test_records_keep_real_text_intact(corpus, shared_data):
    con = connect(corpus.out_dir)
    zh = con.execute("SELECT text_a, text_b, score FROM pair WHERE dataset = 'stsb_zh' LIMIT 1").fetchall()[0]
    first = _lines(shared_data / "text2vec_zh/STS-B/STS-B.train.data")[0]
    assert zh == (first[0], first[1], float(first[2]))
    neg = con.execute("SELECT len(negatives), negative_origins[1] FROM retrieval WHERE dataset = 'wikiqa' "
                      "AND query = 'how are glacier caves formed?'").fetchall()
    assert neg and neg[0][0] > 0 and neg[0][1] == "given"
    # the report's NLI -> retrieval transformation: premise -> entailed hypothesis, contradiction as negative
    trip = con.execute("SELECT query, positive, negatives FROM retrieval WHERE dataset = 'snli' LIMIT 1").fetchall()[0]
    assert trip[0] != trip[1] and len(trip[2]) >= 1
