import json
import random
import numpy as np
import pyarrow as pa
import pytest


from datakit.query import connect
from datakit.engines.packs import Pack, build_pack, texts_from_files
from datakit.engines import minhash as mh
from datakit.hashing import hash_strings
from datakit.pipeline import apply_steps, build
from datakit.recipe import load_recipe
from datakit.manifest import read_manifest, read_shards
from tests.conftest import ROOT, build_yaml, write

WORDS = ("river mountain quiet engine silver market garden window yellow thunder paper rocket coffee music "
         "winter forest planet bridge candle ocean castle pencil orange shadow violin desert harbor").split()


def _sentences(n, seed=0, length=14):
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=length)) for _ in range(n)]


def mh_recall_bands(threshold):
    from datakit.engines.minhash import recall_bands

    return recall_bands(threshold, 128)


def _jsonl(path, rows):
    write(path, "".join(json.dumps(r) + "\n" for r in rows))


def test_dedup_exact_and_near_duplicates_across_datasets(tmp_path):
    base = _sentences(300)
    a = [{"text": t, "label": "x"} for t in base]
    b = [{"text": base[0].upper() + " !!", "label": "x"},                      # exact after normalisation
         {"text": " ".join(base[1].split()[:-1] + ["zebra"]), "label": "x"},    # one word changed: near duplicate
         {"text": base[2], "label": "x"},                                       # exact
         {"text": _sentences(1, seed=99)[0], "label": "y"}]                     # new
    _jsonl(tmp_path / "a.jsonl", a)
    _jsonl(tmp_path / "b.jsonl", b)
    result = build_yaml(tmp_path, """
        name: d
        sources:
          - {name: a, path: a.jsonl, adapter: classification}
          - {name: b, path: b.jsonl, adapter: classification}
        steps:
          - {type: dedup, threshold: 0.7, ngram: 2}
    """)
    m = result.manifest
    assert m["dropped"]["0:dedup"] == {"exact_duplicate": 2, "near_duplicate": 1}
    assert m["counts"]["classification"] == {"a": 300, "b": 1}  # "first" keeps the earlier source
    report = m["steps"][0]["report"]
    assert report["verified_pairs"] >= 1 and report["candidate_pairs"] >= report["verified_pairs"]
    assert (report["bands"]["classification"], report["rows"]["classification"]) == mh_recall_bands(0.7)


def test_dedup_keep_longest_scope_and_exact_method(tmp_path):
    _jsonl(tmp_path / "a.jsonl", [{"text": "Same text here.", "label": "x"}, {"text": "same TEXT here", "label": "x"}])
    _jsonl(tmp_path / "b.jsonl", [{"text": "Same text here!!!", "label": "x"}])
    recipe = """
        name: d
        sources:
          - {name: a, path: a.jsonl, adapter: classification}
          - {name: b, path: b.jsonl, adapter: classification}
        steps:
          - {type: dedup, method: exact, keep: KEEP, scope: SCOPE}
    """
    r = build_yaml(tmp_path, recipe.replace("KEEP", "longest").replace("SCOPE", "kind"), force=True)
    assert [x["text"] for x in read_shards(r.out_dir, "classification").to_pylist()] == ["Same text here!!!"]
    r = build_yaml(tmp_path, recipe.replace("KEEP", "first").replace("SCOPE", "dataset"), force=True)
    assert [x["id"] for x in read_shards(r.out_dir, "classification").to_pylist()] == ["a:0", "b:0"]


def test_dedup_keeps_both_orders_of_a_pair_and_catches_swapped_copies(tmp_path):
    rows = [{"sentence1": "A man plays the guitar on stage.", "sentence2": "Someone performs music.", "score": 4},
            {"sentence1": "Someone performs music.", "sentence2": "A man plays the guitar on stage.", "score": 4},
            {"sentence1": "A cat sleeps.", "sentence2": "A dog runs.", "score": 0}]
    _jsonl(tmp_path / "s.jsonl", rows)
    r = build_yaml(tmp_path, "name: p\nsources: [{name: s, path: s.jsonl, adapter: sts}]\nsteps: [{type: dedup}]\n")
    ids = sorted(x["id"] for x in read_shards(r.out_dir, "pair").to_pylist())
    assert ids == ["s:0:ab", "s:0:ba", "s:2:ab", "s:2:ba"]  # row 1 is row 0 swapped: dropped with both its orders
    assert r.manifest["dropped"]["0:dedup"]["exact_duplicate"] == 2


def _bench_files(tmp_path, bench_sentences):
    write(tmp_path / "bench" / "STSX.test.tsv", "".join(f"{a}\t{b}\t3.0\n" for a, b in
                                                         zip(bench_sentences[::2], bench_sentences[1::2])))
    write(tmp_path / "bench" / "QAX" / "queries.jsonl", json.dumps({"_id": "q1", "text": "what is the tallest mountain on earth"}) + "\n")
    write(tmp_path / "bench" / "QAX" / "corpus.jsonl", json.dumps({"_id": "d1", "title": "Everest", "text": "Mount Everest is the tallest mountain on earth above sea level"}) + "\n")
    write(tmp_path / "bench" / "QAX" / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")


def test_pack_from_files_detects_tasks_splits_and_text_columns(tmp_path):
    bench = _sentences(10, seed=5)
    _bench_files(tmp_path, bench)
    meta = build_pack(texts_from_files([tmp_path / "bench" / "STSX.test.tsv", tmp_path / "bench" / "QAX"]),
                      tmp_path / "pack")
    assert meta["tasks"] == {"STSX": {"test": 10}, "QAX": {"test": 1, "corpus": 1}}
    pack = Pack(tmp_path / "pack")
    assert pack.sig.shape == (12, 128) and len(pack.exact) == 12 and len(pack.ngrams) > 0
    assert set(pack.texts.column("field").to_pylist()) == {"column0", "column1", "query", "document"}


def test_a_pack_is_read_from_disk_and_banded_in_chunks_as_in_one_pass(tmp_path, monkeypatch):
    """Decontamination holds none of a pack in memory: texts memory-mapped, LSH buckets sorted band by band into
    memmaps, equal to banding every signature at once; a pack without texts.arrow is refused in one line."""
    import datakit.engines.packs as packs

    build_pack([("bench", "test", "text", _sentences(300, seed=3))], tmp_path / "pack")
    monkeypatch.setattr(packs, "BUCKET_CHUNK", 7)
    pack = Pack(tmp_path / "pack")
    assert pack.texts.num_rows == 300 and (tmp_path / "pack" / "texts.arrow").is_file()
    bands, rows, keys, owners = pack.buckets(0.8)
    assert isinstance(keys, np.memmap) and isinstance(owners, np.memmap)
    sig = np.asarray(pack.sig)
    bh = mh.band_hashes(sig, bands, rows)
    bh[mh.empty_rows(sig)] = 0
    order = np.argsort(bh, axis=0, kind="stable")
    assert np.array_equal(keys, np.take_along_axis(bh, order, axis=0).T)
    assert np.array_equal(owners, order.T)
    (tmp_path / "pack" / "texts.arrow").unlink()  # incomplete (or older than texts.arrow): rebuild it
    with pytest.raises(packs.PackError, match="without texts.arrow.*datakit bench build"):
        Pack(tmp_path / "pack")


def test_a_pack_built_in_chunks_equals_hashing_every_text_at_once(tmp_path, monkeypatch):
    """build_pack streams: texts hashed a chunk at a time, sorted arrays through ordered partitions on disk. Its
    files equal the whole-pack computation (one argsort, one n-gram pass), boilerplate included; a build that
    dies leaves neither a pack.json nor its scratch folder."""
    import datakit.engines.packs as packs
    from datakit.engines.packs import PackParams, common_ngrams, content_ngrams, ngram_text

    footer = "subscribe to our newsletter for the latest news and stories from around the world every day"
    texts = [f"{t} {footer}" if i % 3 == 0 else t for i, t in enumerate(_sentences(700, seed=9, length=30))]
    items = [("A", "test", "text", texts[:400] + texts[:5]), ("B", "dev", "text", texts[400:])]
    params = PackParams(boilerplate_df=3)
    monkeypatch.setattr(packs, "PACK_CHUNK", 50)
    monkeypatch.setattr(packs, "PACK_CHUNK_BYTES", 9000)  # some chunks end on bytes, some on texts
    meta = build_pack(items, tmp_path / "pack", params)
    assert meta["n_texts"] == 700 and meta["tasks"] == {"A": {"test": 400}, "B": {"dev": 300}}
    pack = Pack(tmp_path / "pack")
    column = pa.array(texts)
    exact = hash_strings(mh.normalize(column))
    order = np.argsort(exact, kind="stable")
    assert np.array_equal(pack.exact, exact[order]) and np.array_equal(pack.exact_rows, order)
    assert np.array_equal(pack.sig, mh.signatures(column, params.minhash()))
    norm = ngram_text(column)
    assert np.array_equal(pack.boilerplate, common_ngrams(*packs.long_ngrams(norm, params), 3))
    assert len(pack.boilerplate) > 0  # the footer's n-grams
    gh, gdoc, _ = content_ngrams(norm, params)
    order = np.argsort(gh, kind="stable")
    assert np.array_equal(pack.ngrams, gh[order]) and np.array_equal(pack.ngram_rows, gdoc[order])
    assert pack.texts.column("text").to_pylist() == texts and not list(tmp_path.glob(".pack.building-*"))
    rows = np.array([699, 3, 3, 64, 0, 350, 128, 65])  # across chunks, repeated, out of order
    assert pack.take(rows, ["task", "text"]).equals(pack.texts.select(["task", "text"]).take(pa.array(rows)))

    def dies():
        yield "C", "test", "text", _sentences(200, seed=1)
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        build_pack(dies(), tmp_path / "other", params)
    assert not (tmp_path / "other" / "pack.json").exists() and not list(tmp_path.glob(".other.building-*"))


def test_decontaminate_exact_near_and_ngram_matches_with_report(tmp_path):
    bench = _sentences(20, seed=7, length=16)
    _bench_files(tmp_path, bench)
    train = _sentences(200, seed=8, length=16)
    rows = [{"title": t, "body": u} for t, u in zip(train[::2], train[1::2])]
    rows.append({"title": bench[0].upper() + "?", "body": "unrelated body text for an exact match"})         # exact
    w = bench[2].split()
    rows.append({"title": " ".join(w[:7] + ["zebra"] + w[8:]), "body": "a near copy in the title"})        # near
    rows.append({"title": "long n-gram", "body": "intro words here " + " ".join(bench[4].split()[:13]) + " and more"})  # 13-gram
    rows.append({"title": "What is the tallest mountain on Earth?", "body": "Everest."})                  # exact query
    _jsonl(tmp_path / "train.jsonl", rows)
    recipe = """
        name: c
        sources: [{name: web, path: train.jsonl, adapter: title_body}]
        steps:
          - {type: decontaminate, bench_files: [bench/STSX.test.tsv, bench/QAX], action: ACTION}
    """
    r = build_yaml(tmp_path, recipe.replace("ACTION", "drop"))
    c = r.manifest["contamination"]
    assert c["contaminated"] == 4 and c["by_dataset"] == {"web": 4} and c["records_checked"] == 104
    assert c["by_match"] == {"exact": 2, "minhash": 1, "ngram": 1}
    assert r.manifest["counts"]["retrieval"]["web"] == 100
    report = json.loads((r.out_dir / "contamination.json").read_text())
    assert report["tasks"]["bench_pack/STSX/test"]["records"] == 3
    assert report["tasks"]["bench_pack/QAX/test"]["records"] == 1
    ex = {e["match"]: e for e in report["tasks"]["bench_pack/STSX/test"]["examples"]}
    assert ex["exact"]["benchmark_text"] == bench[0] and ex["exact"]["field"] == "query"
    assert 0.8 <= ex["minhash"]["score"] < 1 and ex["ngram"]["field"] == "positive"
    assert len(report["datasets"]["web"]["examples"]) == 4
    assert "contamination.json" in r.manifest["artifacts"]

    flagged = build_yaml(tmp_path, recipe.replace("ACTION", "flag"), force=True)
    assert flagged.manifest["counts"]["retrieval"]["web"] == 104
    con = connect(flagged.out_dir)
    n = con.execute("SELECT count(*) FROM retrieval WHERE list_contains([e.step FOR e IN lineage.events], "
                    "'decontaminate')").fetchall()[0][0]
    assert n == 4


def test_cli_style_apply_steps_on_an_existing_output(tmp_path):
    out = tmp_path / "demo"
    build(load_recipe(ROOT / "recipes" / "demo.yaml"), out)
    _bench_files(tmp_path, ["A cat is sitting on a windowsill.", "A dog is running in a field."])
    build_pack(texts_from_files([tmp_path / "bench" / "STSX.test.tsv"]), tmp_path / "pack")
    result = apply_steps(out, tmp_path / "clean", [{"type": "decontaminate", "packs": [str(tmp_path / "pack")]}])
    m = result.manifest
    assert m["contamination"]["contaminated"] == 2  # the sts pair in both orders
    assert m["parent"]["recipe"]["name"] == "demo" and m["recipe"]["name"] == "demo+decontaminate"
    assert m["quarantined"]["n"] == read_manifest(out)["quarantined"]["n"]  # input quarantine carried over
    assert sum(m["counts"]["pair"].values()) == sum(read_manifest(out)["counts"]["pair"].values()) - 2


def test_real_contamination_stsb_train_against_sts_benchmarks(shared_data, tmp_path):
    """STS12-16 and STS-B test sentences really do sit in STS-B train: the audit must find them."""
    build_pack(texts_from_files([shared_data / "stsb" / "sts-test.csv"]), tmp_path / "pack")
    write(tmp_path / "r.yaml", f"""
        name: real
        allow_paths: [{shared_data}]
        sources:
          - name: stsb_train
            path: {shared_data / 'stsb' / 'sts-train.csv'}
            format: tsv
            csv: {{header: false, quote_char: false, column_names: [g, f, y, i, score, sentence1, sentence2]}}
            adapter: sts
            options: {{both_orders: false}}
        steps:
          - {{type: decontaminate, packs: [pack], match: [exact]}}
    """)
    r = build(load_recipe(tmp_path / "r.yaml"), tmp_path / "out")
    test_sents = set()
    for line in (shared_data / "stsb" / "sts-test.csv").read_text().splitlines():
        test_sents.update(p.strip().lower() for p in line.split("\t")[5:7])
    expected = 0
    for line in (shared_data / "stsb" / "sts-train.csv").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 7 and (parts[5].strip().lower() in test_sents or parts[6].strip().lower() in test_sents):
            expected += 1
    found = r.manifest["contamination"]["contaminated"]
    assert expected > 50 and abs(found - expected) <= expected * 0.05


def test_real_chinese_contamination_bge_file_against_chinese_stsb_test(shared_data, tmp_path):
    """The text2vec bge finetune file holds Chinese STS-B test sentences: character shingles must find them."""
    zh = shared_data / "text2vec_zh"
    build_pack(texts_from_files([zh / "STS-B" / "STS-B.test.data"]), tmp_path / "pack")
    write(tmp_path / "r.yaml", f"""
        name: zh
        allow_paths: [{zh}]
        sources:
          - {{name: bge_zh, path: {zh / 'bge_finetune_data.jsonl'}, adapter: retrieval,
             columns: {{positive: pos, negatives: neg}}}}
        steps:
          - {{type: decontaminate, packs: [pack], action: flag}}
    """)
    r = build(load_recipe(tmp_path / "r.yaml"), tmp_path / "out")
    test = set()
    for line in (zh / "STS-B" / "STS-B.test.data").read_text(encoding="utf-8").splitlines():
        test.update(line.split("\t")[:2])
    expected = 0
    for line in (zh / "bge_finetune_data.jsonl").open(encoding="utf-8"):
        rec = json.loads(line)
        if any(t in test for t in [rec["query"], *rec["pos"], *rec["neg"]]):
            expected += len(rec["pos"])
    c = r.manifest["contamination"]
    assert expected <= c["by_match"]["exact"] <= expected * 1.02
    assert c["contaminated"] > c["by_match"]["exact"]  # near copies found beyond exact strings


# Real-shaped near-copies around the 0.8 threshold (true Jaccard as README defines it: word sets, or character
# bigrams for Chinese). Before exact verification and recall bands, about half of the 0.8-0.9 pairs were missed.
NEAR = [
    ("我为什么蚂蚁借呗不见了", "为什么蚂蚁借呗不见了", 0.9),
    ("支付宝里找不到花呗", "我的支付宝里找不到花呗", 0.8),  # exactly at the threshold: a duplicate (>=)
    ("为什么我的花呗不能用了呢", "为什么我的花呗不能用了", 10 / 11),
    ("where is the hotel used in the movie the shining", "where is the hotel in the movie the shining", 0.875),
    ("how many episodes are in season two of the office",
     "how many episodes are there in season two of the office", 10 / 11),
    ("when did the first harry potter book come out", "when did the first harry potter movie come out", 0.8),
    ("what is the capital city of new zealand", "what is the capital of new zealand", 0.875),
    ("a man is playing a large flute", "a man is playing a flute", 5 / 6),
    ("how long does it take to boil an egg", "how long does it take to hard boil an egg", 0.9),
]
BELOW = [
    ("借呗的额度为什么突然降低了", "借呗额度为什么突然降低了", 10 / 13),
    ("花呗账单可以分期还款吗", "花呗的账单可以分期还款吗", 0.75),
    ("蚂蚁借呗还款日是哪一天", "蚂蚁借呗的还款日是哪一天", 0.75),
    ("花呗怎么提升额度", "借呗怎么提升额度", 0.75),
    ("who sings the song time after time", "who sang the song time after time", 5 / 7),
    ("who played the mom in the movie home alone", "who played the mother in the movie home alone", 7 / 9),
    ("the cat is sleeping on the red sofa", "the dog is sleeping on the red sofa", 0.75),
]


def _definition_jaccard(a: str, b: str) -> float:
    """README's definition in plain Python: normalised text, word sets, or character bigrams for CJK text."""
    import re

    from datakit.engines.minhash import normalize

    sets = []
    for norm in normalize(pa.array([a, b])).to_pylist():
        chars = norm.replace(" ", "")
        cjk = len(re.findall(r"[\u4e00-\u9fff]", chars)) >= 0.3 * len(chars)
        sets.append({chars[i: i + 2] for i in range(len(chars) - 1)} if cjk else set(norm.split()))
    return len(sets[0] & sets[1]) / len(sets[0] | sets[1])


def test_real_shaped_pairs_have_the_stated_jaccard():
    for a, b, j in NEAR + BELOW:
        assert _definition_jaccard(a, b) == pytest.approx(j), (a, b)


def test_dedup_finds_every_pair_at_or_above_the_threshold_and_none_below(tmp_path):
    rows = [{"text": t, "label": "q"} for a, b, _ in NEAR + BELOW for t in (a, b)]
    rows += [{"text": s, "label": "q"} for s in _sentences(200, seed=5)]  # unrelated filler
    _jsonl(tmp_path / "q.jsonl", rows)
    result = build_yaml(tmp_path, """
        name: d
        sources: [{name: q, path: q.jsonl, adapter: classification}]
        steps: [{type: dedup, threshold: 0.8}]
    """)
    kept = set(read_shards(result.out_dir, "classification").column("text").to_pylist())
    for a, b, _ in NEAR:
        assert a in kept and b not in kept, (a, b)  # the first of each pair stays
    for a, b, _ in BELOW:
        assert a in kept and b in kept, (a, b)
    report = result.manifest["steps"][0]["report"]
    assert (report["bands"]["classification"], report["rows"]["classification"]) == (21, 6)
    assert report["verified_pairs"] == len(NEAR) and report["candidate_pairs"] >= report["verified_pairs"]


def test_pairs_at_the_threshold_on_every_side_are_found_when_their_joined_text_is_far_below_it(tmp_path):
    """The worst case of banding joined sides: both sides at J 0.8, their shared words the same on both sides,
    so the joined texts sit at 0.667 (t/(2-t)). Bands chosen for 0.75 found such a pair with probability 0.97
    (about 9 of 300 missed); chosen for t/(2-t) with 0.999."""
    rng = random.Random(7)
    word = lambda: "".join(rng.choice("bcdfghjklmnpqrstvwz") + rng.choice("aeiou") for _ in range(4))  # noqa: E731
    rows = []
    for g in range(300):
        shared = " ".join(word() for _ in range(8))
        a1, b1, a2, b2 = (f"{shared} {word()}" for _ in range(4))  # each side: 8 shared words of 10 -> J 0.8
        rows += [{"sentence1": a1, "sentence2": b1, "score": 3.0}, {"sentence1": a2, "sentence2": b2, "score": 3.0}]
    assert _definition_jaccard(rows[0]["sentence1"], rows[1]["sentence1"]) == pytest.approx(0.8)
    assert _definition_jaccard(rows[0]["sentence1"] + " " + rows[0]["sentence2"],
                               rows[1]["sentence1"] + " " + rows[1]["sentence2"]) == pytest.approx(8 / 12)
    _jsonl(tmp_path / "sts.jsonl", rows)
    result = build_yaml(tmp_path, """
        name: d
        sources: [{name: sts, path: sts.jsonl, adapter: sts}]
        steps: [{type: dedup, threshold: 0.8}]
    """)
    kept = {r["text_a"] for r in read_shards(result.out_dir, "pair").to_pylist()}
    missed = sum(rows[i + 1]["sentence1"] in kept for i in range(0, len(rows), 2))
    assert missed <= 2 and all(rows[i]["sentence1"] in kept for i in range(0, len(rows), 2)), missed
    report = result.manifest["steps"][0]["report"]
    assert (report["bands"]["pair"], report["rows"]["pair"]) == (32, 4)


def test_decontamination_flags_every_pair_at_or_above_the_threshold_and_none_below(tmp_path):
    from datakit.engines.packs import build_pack

    build_pack([("bench", "test", "text", [a for a, _, _ in NEAR + BELOW])], tmp_path / "pack")
    _jsonl(tmp_path / "t.jsonl", [{"text": b, "label": "q"} for _, b, _ in NEAR + BELOW])
    result = build_yaml(tmp_path, """
        name: d
        sources: [{name: t, path: t.jsonl, adapter: classification}]
        steps: [{type: decontaminate, packs: [pack], action: drop}]
    """)
    kept = set(read_shards(result.out_dir, "classification").column("text").to_pylist())
    assert kept == {b for _, b, _ in BELOW}
    c = result.manifest["contamination"]
    assert c["contaminated"] == len(NEAR) and c["minhash_verified"] == len(NEAR) and c["minhash_candidates"] >= len(NEAR)
    report = json.loads((result.out_dir / "contamination.json").read_text())
    assert report["minhash_candidates"] == c["minhash_candidates"]


def test_dedup_never_drops_a_record_that_teaches_something_else(tmp_path):
    """SICK's minimal edits with another relatedness stay; the same edit with the same score goes. One text under
    two labels is a reported label conflict, both kept. The same query with another answer stays."""
    sts = [{"sentence1": "A man is aiming a gun at a target", "sentence2": "A man is handling a gun", "score": 3.6},
           {"sentence1": "A man is aiming a gun at a target", "sentence2": "A man is handling the gun", "score": 4.4},
           {"sentence1": "A woman is slicing an onion into rings", "sentence2": "A woman is cutting an onion", "score": 4.0},
           {"sentence1": "A woman is slicing an onion into rings", "sentence2": "A woman is cutting an onion now", "score": 4.0}]
    cls = [{"text": "how do I reset my pin", "label": "pin"}, {"text": "How do I reset my PIN?", "label": "card"},
           {"text": "my card has not arrived yet", "label": "arrival"},
           {"text": "my card has not arrived", "label": "arrival"}]
    ret = [{"query": "what is the capital of australia", "positive": "Canberra is the capital."},
           {"query": "what is the capital of australia", "positive": "The capital is Canberra, not Sydney, since 1913."},
           {"query": "who wrote hamlet", "positive": "Hamlet was written by William Shakespeare."},
           {"query": "who wrote hamlet", "positive": "Hamlet was written by William Shakespeare!"}]
    _jsonl(tmp_path / "sts.jsonl", sts)
    _jsonl(tmp_path / "cls.jsonl", cls)
    _jsonl(tmp_path / "ret.jsonl", ret)
    result = build_yaml(tmp_path, """
        name: d
        sources:
          - {name: sts, path: sts.jsonl, adapter: sts, options: {both_orders: false}}
          - {name: cls, path: cls.jsonl, adapter: classification}
          - {name: ret, path: ret.jsonl, adapter: retrieval}
        steps: [{type: dedup, threshold: 0.8}]
    """)
    pairs = sorted(r["id"] for r in read_shards(result.out_dir, "pair").to_pylist())
    assert pairs == ["sts:0", "sts:1", "sts:2"]  # 0 and 1 differ in score; 3 repeats 2 with the same score
    texts = sorted(r["id"] for r in read_shards(result.out_dir, "classification").to_pylist())
    assert texts == ["cls:0", "cls:1", "cls:2"]  # 0/1: a label conflict, both kept; 3 repeats 2
    queries = sorted(r["id"] for r in read_shards(result.out_dir, "retrieval").to_pylist())
    assert queries == ["ret:0", "ret:1", "ret:2"]  # same query, other answer: kept; 3 repeats 2
    report = json.loads((result.out_dir / "dedup.json").read_text())
    assert report["label_conflicts"] == 1
    [conflict] = report["label_conflict_examples"]
    assert {conflict["a"]["label"], conflict["b"]["label"]} == {"pin", "card"}
    kept_ids = {c["kept"]["id"] for c in report["clusters"]}
    assert kept_ids == {"sts:2", "cls:2", "ret:2"}
    replaced = {r["id"]: r for c in report["clusters"] for r in c["replaced"]}
    assert set(replaced) == {"sts:3", "cls:3", "ret:3"} and replaced["cls:3"]["row"] == 3
    assert replaced["cls:3"]["file"] == "cls.jsonl"
    assert result.manifest["steps"][0]["report"]["dropped_by_dataset"] == {
        "cls": {"near_duplicate": 1}, "ret": {"exact_duplicate": 1}, "sts": {"near_duplicate": 1}}


def test_dedup_across_datasets_reports_and_warns_when_it_empties_one(tmp_path):
    rows = [{"text": s, "label": "q"} for s in _sentences(40, seed=3)]
    _jsonl(tmp_path / "a.jsonl", rows)
    _jsonl(tmp_path / "b.jsonl", rows[:30])  # the same texts loaded twice
    recipe = """
        name: d
        sources:
          - {name: a, path: a.jsonl, adapter: classification}
          - {name: b, path: b.jsonl, adapter: classification}
        steps: [{type: dedup, scope: %s}]
    """
    result = build_yaml(tmp_path, recipe % "kind")
    assert result.manifest["counts"]["classification"] == {"a": 40}
    assert result.manifest["steps"][0]["report"]["dropped_by_dataset"] == {"b": {"exact_duplicate": 30}}
    [warning] = result.manifest["warnings"]
    assert "30 of 30 records of dataset 'b'" in warning
    result = build_yaml(tmp_path, recipe % "dataset", force=True)
    assert result.manifest["counts"]["classification"] == {"a": 40, "b": 30} and "warnings" not in result.manifest


def test_dedup_command_takes_scope_and_fields(tmp_path):
    import subprocess
    import sys

    rows = [{"query": f"question {i} about rivers", "positive": "the same answer for all"} for i in range(5)]
    _jsonl(tmp_path / "r.jsonl", rows)
    build_yaml(tmp_path, "name: d\nsources: [{name: r, path: r.jsonl, adapter: retrieval}]\n")
    run = [sys.executable, "-m", "datakit.cli", "dedup", str(tmp_path / "out"), "--out", str(tmp_path / "d")]
    r = subprocess.run(run + ["--fields", "retrieval=positive", "--scope", "dataset"], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert read_shards(tmp_path / "d", "retrieval").num_rows == 1  # by positive alone: one record left


FOOTER = ("Copyright 2004 The Associated Press. All rights reserved. This material may not be published, broadcast, "
          "rewritten or redistributed.")
LINK = '&lt;A HREF="http://www.investor.reuters.com/FullQuote.aspx?ticker=IBM.N target=/stocks/quickinfo/fullquote"&gt;IBM.N&lt;/A&gt;'


def test_decontamination_ignores_wire_boilerplate_and_markup_but_not_content(tmp_path):
    """Web text: benchmark and training articles share bylines, a link's markup and a 17-word footer; only a
    copied article is contamination, not an article ending with the same word before the same footer."""
    rng = random.Random(11)
    bench = [f"WASHINGTON (AP) - {' '.join(rng.choices(WORDS, k=30))} shares ({LINK}) fell in the end. {FOOTER}"
             for _ in range(12)]
    build_pack([("news", "test", "text", bench)], tmp_path / "pack")
    assert len(np.load(tmp_path / "pack" / "boilerplate.npy")) > 0
    clean = [f"LONDON (AP) - {' '.join(rng.choices(WORDS, k=30))} shares ({LINK}) fell in the end. {FOOTER}"
             for _ in range(12)]
    copied = bench[3].replace("WASHINGTON", "PARIS")
    _jsonl(tmp_path / "t.jsonl", [{"text": t, "label": "clean"} for t in clean] + [{"text": copied, "label": "copy"}])
    result = build_yaml(tmp_path, """
        name: d
        sources: [{name: t, path: t.jsonl, adapter: classification}]
        steps: [{type: decontaminate, packs: [pack], match: [ngram], action: drop}]
    """)
    assert result.manifest["contamination"]["contaminated"] == 1
    assert set(read_shards(result.out_dir, "classification").column("label").to_pylist()) == {"clean"}


def test_benchmark_task_names_keep_dots_and_from_files_takes_many(tmp_path):
    import subprocess
    import sys

    from pathlib import Path

    from datakit.engines.packs import task_name

    assert task_name(Path("topics.beir-v1.0.0-nq.test.tsv.gz")) == "topics.beir-v1.0.0-nq"
    assert task_name(Path("topics.beir-v1.0.0-scifact.test.tsv.gz")) == "topics.beir-v1.0.0-scifact"
    assert task_name(tmp_path / "banking77" / "test.csv") == "banking77"
    write(tmp_path / "a.test.tsv", "sentence1\tsentence2\nthe first sentence here\tthe second one\n")
    write(tmp_path / "b.dev.tsv", "sentence1\tsentence2\nanother pair of words\tand more of them\n")
    r = subprocess.run([sys.executable, "-m", "datakit.cli", "bench", "build", "--from-files", str(tmp_path / "a.test.tsv"),
                        str(tmp_path / "b.dev.tsv"), "--out", str(tmp_path / "pack")], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert set(json.loads((tmp_path / "pack" / "pack.json").read_text())["tasks"]) == {"a", "b"}


def test_pairs_sharing_one_sentence_with_a_test_set_sides_any_vs_all_and_what_decontamination_says(tmp_path):
    """SICK-style data: train pairs reuse test sentences. `sides: any` drops every pair with one test sentence
    (and warns that it took most of the dataset, or fails under max_drop); `sides: all` drops only pairs whose two
    sentences are both test sentences. Flagged records carry match, benchmark and score in their lineage, and
    every matched record is in the records file."""
    test = _sentences(8, seed=41)
    write(tmp_path / "bench" / "PairX.test.tsv", "".join(f"{a}\t{b}\t3.0\n" for a, b in zip(test[::2], test[1::2])))
    build_pack(texts_from_files([tmp_path / "bench" / "PairX.test.tsv"]), tmp_path / "pack")
    fresh = _sentences(8, seed=42)
    rows = [{"sentence1": test[0], "sentence2": fresh[0], "score": 1.0},  # one test sentence
            {"sentence1": fresh[1], "sentence2": test[3], "score": 2.0},  # one test sentence
            {"sentence1": test[4], "sentence2": test[5], "score": 4.0},    # a test pair itself
            {"sentence1": fresh[2], "sentence2": fresh[3], "score": 3.0}]  # clean
    _jsonl(tmp_path / "pairs.jsonl", rows)
    recipe = """
        name: p
        sources: [{name: sick, path: pairs.jsonl, adapter: sts, options: {both_orders: false}}]
        steps: [{type: decontaminate, packs: [pack], SETTINGS}]
    """
    res = build_yaml(tmp_path, recipe.replace("SETTINGS", "sides: any"))
    assert res.manifest["counts"]["pair"] == {"sick": 1}
    [warning] = res.manifest["warnings"]
    assert "step 0:decontaminate removed 3 of 4 records of dataset 'sick' (pair, 75%)" in warning
    res = build_yaml(tmp_path, recipe.replace("SETTINGS", "sides: all"), force=True)
    assert res.manifest["counts"]["pair"] == {"sick": 3} and "warnings" not in res.manifest
    lines = [json.loads(x) for x in (res.out_dir / "contamination_records.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == ["sick:2"] and {m["field"] for m in lines[0]["matches"]} == {"text_a", "text_b"}

    from datakit.steps import StepFailed

    with pytest.raises(StepFailed, match=r"removed more than its max_drop 50% of dataset 'sick' \(pair\): 3 of 4"):
        build_yaml(tmp_path, recipe.replace("SETTINGS", "max_drop: 0.5"), force=True)
    assert read_manifest(res.out_dir)["recipe"]["sha256"] == res.manifest["recipe"]["sha256"]  # previous kept

    res = build_yaml(tmp_path, recipe.replace("SETTINGS", "action: flag"), force=True)
    con = connect(res.out_dir)
    details = dict(con.execute("SELECT id, [e.detail FOR e IN lineage.events IF e.step = 'decontaminate'][1] "
                               "FROM pair ORDER BY id").fetchall())
    assert details["sick:3"] is None
    assert details["sick:0"] == "contaminated: exact 1.00 pack/PairX/test (text_a)"
    assert "pack/PairX/test (text_a)" in details["sick:2"] or "pack/PairX/test (text_b)" in details["sick:2"]


@pytest.mark.parametrize("mapped", ["whole", "in chunks"])
def test_dedup_equals_a_brute_force_all_pairs_dedup(tmp_path, monkeypatch, mapped):
    """The out-of-core step (hash partitions, LSH buckets, union-find over verified pairs) against the definition
    computed directly: every pair of records whose every side has word-set Jaccard >= 0.8 and whose labels agree is
    linked, and each cluster keeps its first record. Verification maps the shingle sets once per group (small
    files) or afresh every few pairs (big ones)."""
    import datakit.steps.dedup as dedup
    from datakit.engines.minhash import normalize

    if mapped == "in chunks":
        monkeypatch.setattr(dedup, "MAP_WHOLE", 0)
        monkeypatch.setattr(dedup, "PAIR_CHUNK", 3)

    rng = random.Random(7)
    base = _sentences(120, seed=11, length=12)
    texts, labels = [], []
    for i in range(300):
        t = rng.choice(base) if i >= 120 else base[i]
        if i >= 120 and rng.random() < 0.7:  # an edited copy: one word changed, or dropped
            words = t.split()
            j = rng.randrange(len(words))
            words[j:j + 1] = [] if rng.random() < 0.3 else [rng.choice(WORDS)]
            t = " ".join(words)
        texts.append(t)
        labels.append(rng.choice(["a", "b"]) if i % 17 == 0 else "a")
    _jsonl(tmp_path / "d.jsonl", [{"text": t, "label": lab} for t, lab in zip(texts, labels)])
    result = build_yaml(tmp_path, "name: b\nsources: [{name: d, path: d.jsonl, adapter: classification}]\n"
                                  "steps: [{type: dedup}]\n")
    kept = sorted(int(i.split(":")[1]) for i in read_shards(result.out_dir, "classification").column("id").to_pylist())

    words = [set(t.split()) for t in normalize(pa.array(texts)).to_pylist()]
    parent = list(range(len(texts)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a in range(len(texts)):
        for b in range(a + 1, len(texts)):
            if labels[a] == labels[b] and len(words[a] & words[b]) / len(words[a] | words[b]) >= 0.8:
                ra, rb = root(a), root(b)
                parent[max(ra, rb)] = min(ra, rb)
    expected = sorted({min(i for i in range(len(texts)) if root(i) == r) for r in {root(i) for i in range(len(texts))}})
    assert len(expected) < 250 and kept == expected


def test_a_test_split_inside_one_file_from_a_bench_spec_to_decontamination(tmp_path):
    """SICK's layout (train and test rows in one file, a split column): the recipe reads the train rows with
    `where:`, `bench build --from-spec` packs the test rows, and decontamination catches a train pair that copies
    a test sentence, and nothing else."""
    from tests.conftest import run

    rows = [("1", "A man is slicing a tomato on the board", "A person cuts a tomato", "4.2", "TRAIN"),
            ("2", "Two dogs are running through a green field", "Dogs run in a field", "4.5", "TRAIN"),
            ("3", "A woman is playing the violin on stage", "A woman plays an instrument", "4.0", "TEST"),
            ("4", "The children are building a sandcastle", "Kids build a castle of sand", "4.6", "TEST"),
            ("5", "A woman is playing the violin on stage", "Nobody is playing music", "1.1", "TRAIN")]
    write(tmp_path / "SICK.txt", "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tSemEval_set\n"
          + "".join("\t".join(r) + "\n" for r in rows))
    write(tmp_path / "bench.yaml", "tasks:\n  - name: SICK-R\n    path: SICK.txt\n    format: tsv\n"
          "    where: {SemEval_set: TEST}\n    columns: {text_a: sentence_A, text_b: sentence_B}\n")
    r = run("datakit", "bench", "build", "--from-spec", str(tmp_path / "bench.yaml"), "--out", str(tmp_path / "pack"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "pack" / "pack.json").read_text())["tasks"] == {"SICK-R": {"test": 4}}
    res = build_yaml(tmp_path, """
name: sick
sources:
  - name: sick_train
    path: SICK.txt
    format: tsv
    adapter: sts
    options: {both_orders: false, score_range: [1, 5]}
    columns: {text_a: sentence_A, text_b: sentence_B, score: relatedness_score}
    where: {SemEval_set: TRAIN}
steps:
  - {type: decontaminate, packs: [pack], action: drop, sides: any, max_drop: 1.0}
""")
    kept = read_shards(res.out_dir, "pair").column("text_a").to_pylist()
    assert sorted(kept) == ["A man is slicing a tomato on the board", "Two dogs are running through a green field"]
    bad = run("datakit", "bench", "build", "--from-spec", str(tmp_path / "SICK.txt"), "--out", str(tmp_path / "p2"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
