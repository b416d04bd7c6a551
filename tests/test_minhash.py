import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from datakit.engines import minhash as mh
from datakit.hashing import hash_strings, splitmix, string_buffers
from tests import lsh_reference as ref


def fnv1a(b: bytes) -> int:
    h = 0xCBF29CE484222325
    for x in b:
        h = ((h ^ x) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def test_normalize_nfkc_case_punctuation_whitespace():
    got = mh.normalize(pa.array(["  Hello,\tWORLD!! ", "Ｆｕｌｌ－ｗｉｄｔｈ　ｔｅｘｔ", "l'été — déjà vu…", None])).to_pylist()
    assert got == ["hello world", "full width text", "l été déjà vu", ""]


def test_hash_strings_is_fnv1a_then_mixed_and_order_independent():
    words = ["", "a", "abc", "héllo", "a much longer token than the others", "abc"]
    h = hash_strings(pa.array(words))
    expected = splitmix(np.array([fnv1a(w.encode()) ^ len(w.encode()) for w in words], np.uint64))
    assert (h == expected).all() and h[2] == h[5] and len(set(h.tolist())) == 5
    sliced = hash_strings(pa.array(words).slice(2, 3))
    assert (sliced == h[2:5]).all()


def test_word_shingles_and_short_texts():
    cfg = mh.MinHashConfig(ngram=3)
    h, doc = mh.shingle(pa.array(["a b c d", "a b", "", "x"]), cfg)
    assert doc.tolist() == [0, 0, 1, 3]  # 2 trigrams, one shingle for the 2-word text, none for the empty one
    h2, _ = mh.shingle(pa.array(["A, b; c d!"]), cfg)
    assert (h2 == h[:2]).all()


def test_chinese_text_is_shingled_by_characters():
    cfg = mh.MinHashConfig(char_ngram=2)
    texts = pa.array(["一架飞机要起飞了。", "一架飞机正在起飞。", "The plane takes off"])
    norm = mh.normalize(texts)
    assert mh.is_cjk(norm, 0.3).tolist() == [True, True, False]
    h, doc = mh.shingle(texts, cfg)
    assert (doc == 0).sum() == 7 and (doc == 1).sum() == 7 and (doc == 2).sum() == 4  # 8 chars -> 7 bigrams; 4 words
    sig = mh.signatures(texts, cfg)
    a = {"一架", "架飞", "飞机", "机要", "要起", "起飞", "飞了"}
    b = {"一架", "架飞", "飞机", "机正", "正在", "在起", "起飞"}
    assert abs(ref.jaccard_estimate(sig[0], sig[1]) - ref.exact_jaccard(a, b)) < 0.15
    forced = mh.shingle(texts, mh.MinHashConfig(script="word"))[1]
    assert (forced == 0).sum() == 1  # no spaces: one word


def test_signature_estimates_track_exact_jaccard():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(400)]
    cfg = mh.MinHashConfig(ngram=1, num_perm=256)
    base = rng.sample(vocab, 60)
    texts, truth = [], []
    for keep in range(0, 61, 6):
        other = base[:keep] + rng.sample([w for w in vocab if w not in base], 60 - keep)
        texts.append(" ".join(other))
        truth.append(ref.exact_jaccard(set(base), set(other)))
    sig = mh.signatures(pa.array([" ".join(base)] + texts), cfg)
    est = ref.jaccard_estimate(sig[:1], sig[1:])
    assert np.abs(est - np.array(truth)).max() < 0.1
    again = mh.signatures(pa.array([" ".join(base)]), cfg)
    assert (again == sig[:1]).all()  # deterministic across batches


def test_empty_texts_have_empty_signatures():
    sig = mh.signatures(pa.array(["", "  ...  ", "words here"]), mh.MinHashConfig())
    assert mh.empty_rows(sig).tolist() == [True, True, False]
    assert ref.jaccard_estimate(sig[0], sig[1]) == 0.0


@pytest.mark.parametrize("threshold,num_perm", [(0.8, 128), (0.5, 128), (0.7, 256), (0.9, 64)])
def test_bands_match_datasketch_parameter_choice(threshold, num_perm):
    from datasketch.lsh import _optimal_param

    assert ref.optimal_bands(threshold, num_perm) == _optimal_param(threshold, num_perm, 0.5, 0.5)


def test_candidates_are_verified_so_band_collisions_are_not_duplicates():
    cfg = mh.MinHashConfig(ngram=1)
    texts = pa.array(["a b c d e f g h", "a b c d e f g x", "q r s t u v w z"])
    sig = mh.signatures(texts, cfg)
    bands, rows = mh.recall_bands(0.8, cfg.num_perm)  # as the dedup step
    bh = mh.band_hashes(sig, bands, rows)
    bh[2, 0] = bh[0, 0]  # force a band collision between unrelated texts 0 and 2
    pairs = ref.bucket_pairs(bh)
    assert [0, 2] in pairs.tolist()
    sets = mh.shingle_sets(*mh.shingle(texts, cfg), len(texts))
    verified, scores = mh.verify_exact(pairs, sets, threshold=0.6)  # the exact Jaccard decides, as in the step
    assert verified.tolist() == [[0, 1]] and scores.tolist() == [7 / 9]


def test_components_and_keep_policies():
    labels = mh.components(np.array([[0, 1], [1, 2], [5, 6], [6, 7], [3, 3]]), 9)
    assert labels.tolist() == [0, 0, 0, 3, 4, 5, 5, 5, 8]
    lengths = np.array([3, 9, 9, 1, 1, 2, 2, 8, 1])
    assert np.nonzero(mh.keep_mask(labels))[0].tolist() == [0, 3, 4, 5, 8]
    assert np.nonzero(mh.keep_mask(labels, lengths, "longest"))[0].tolist() == [1, 3, 4, 7, 8]


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.85, 0.9])
def test_recall_bands_make_a_pair_at_the_threshold_a_candidate_99_percent_of_the_time(threshold):
    bands, rows = mh.recall_bands(threshold, 128)
    assert bands * rows <= 128
    assert mh.candidate_probability(threshold, bands, rows) >= 0.99
    assert mh.candidate_probability(threshold, 128 // (rows + 1), rows + 1) < 0.99  # the most rows that do
    assert mh.recall_bands(0.8, 128) == (21, 6)


def test_exact_pair_jaccard_equals_python_sets():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 12))) for _ in range(200)]
    cfg = mh.MinHashConfig()
    sets = mh.shingle_sets(*mh.shingle(pa.array(texts), cfg), len(texts))
    pairs = rng.integers(0, len(texts), size=(500, 2))
    got = mh.pair_jaccard(pairs, sets)
    for (a, b), j in zip(pairs, got):
        sa, sb = set(texts[a].split()), set(texts[b].split())
        assert j == pytest.approx(len(sa & sb) / len(sa | sb))
    kept, scores = mh.verify_exact(pairs, sets, threshold=0.5)
    assert (scores >= 0.5).all() and len(kept) == int((got >= 0.5).sum())


def test_bucket_pairs_compare_every_pair_of_a_bucket_and_split_a_big_one():
    # docs 3, 1, 2 share band 0; 8, 9 share band 1; in band 1, 1 and 2 share a hash and 3 does not
    docs = np.array([3, 1, 2, 7, 8, 9])
    bh = np.array([[5, 10], [5, 11], [5, 11], [6, 12], [13, 4], [14, 4]], np.uint64)
    assert ref.bucket_pairs(bh, docs).tolist() == [[1, 2], [1, 3], [2, 3], [8, 9]]
    # the bucket of 3 over a cap of 2 is split by band 1: (1, 2) only, not a star from doc 1
    assert ref.bucket_pairs(bh, docs, cap=2).tolist() == [[1, 2], [8, 9]]


def test_pairs_within_runs_and_big_buckets_split_by_the_next_band_never_a_star():
    members = np.array([3, 1, 2, 7, 8, 9])
    got = mh.pairs_within_runs(members, np.array([0, 4]), np.array([3, 2])).tolist()
    assert sorted(map(tuple, got)) == [(1, 2), (1, 3), (2, 3), (8, 9)]  # every pair of each run
    # a bucket of 6 over a cap of 2: split by band 1's hashes into {0, 1, 2} (still over: split by band 2) and {3, 4}
    band_hashes = {1: {0: 5, 1: 5, 2: 5, 3: 6, 4: 6, 5: 7}, 2: {0: 1, 1: 1, 2: 2, 3: 0, 4: 0, 5: 0}}

    def hashes(band, docs):
        return np.array([band_hashes[band][int(d)] for d in docs], np.uint64)

    pairs = sorted(map(tuple, mh.split_bucket(1, 0, 3, hashes, np.arange(6), cap=2).tolist()))
    assert pairs == [(0, 1), (3, 4)]  # 0~1 share bands 0, 1 and 2; 3~4 share 0 and 1; 2 and 5 are paired with none
    # every band alike and still too many: one signature, linked in a chain (each to the next), not a star
    same = {1: dict.fromkeys(range(5), 1), 2: dict.fromkeys(range(5), 1)}
    chain = mh.split_bucket(1, 0, 3, lambda b, d: np.array([same[b][int(x)] for x in d], np.uint64),
                            np.arange(5), cap=2)
    assert sorted(map(tuple, chain.tolist())) == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_byte_kernels_equal_the_arrow_and_numpy_paths_on_fuzzed_text():
    """`normalize` and word tokens take ASCII texts, and texts with the characters beyond ASCII that
    `unicode_tables` takes (accents, Greek, Cyrillic, CJK, Unicode punctuation and symbols, full-width forms),
    through numba loops and the rest through Arrow's Unicode kernels; on every text both give the Arrow path's
    result (punctuation runs, double spaces, tabs, non-breaking and exotic spaces, control bytes, combining marks,
    Hangul jamo, compatibility characters NFKC makes two, a capital whose lower case is longer, 4-byte
    characters, nulls, sliced arrays); `hash_strings` is FNV-1a of the UTF-8 bytes on them."""
    import random

    from datakit.engines import minhash as mh

    rng = random.Random(0)
    common = list("abcXYZ  .,-!?'\"()[]{}_~`^|/\\:;@#$%&*+=<>0129") + ["\t", "\n", "\r", "\f", "\v"]
    # letters, CJK, punctuation, symbols, format characters, and characters NFKC makes one other (full-width
    # forms, the ohm sign, a circled digit, half-width katakana)
    taken = list("éßÄÉΣβЖжñ日本한–—’“”«»·¿¡°±€©\u00ad\u200bＡ，（１Ωℌ①ｶ")
    rare = ["\u00a0", "\u2028", "\u3000", "\x1c", "\x85", "\x7f", "\x00", "\u0301", "\u1161", "ﬁ", "İ", "😀",
            "\u2003", "ｶﾞ", "㎏", "™"]
    texts = ["".join(rng.choice(rare) if r < 0.02 else rng.choice(taken) if r < 0.08 else rng.choice(common)
                     for r in (rng.random() for _ in range(rng.randint(0, 30)))) for _ in range(20_000)]
    texts += [None, "", " ", "   ", ".", " . ", "A  B", "a . b", "a  .  b", "x -- , y", "Hello, World!",
              "«Été» — ÇA", "a –\t— b", "x ’ y", "e\u0301", "\u1100\u1161", "ΣΑΣ", "Straße—Ünïcode", " – ", "–a–",
              "一个男人，在（弹）吉他！", "ＡＢＣ　ｄｅｆ", "ｶﾞｷﾞ"]
    arr = pa.array(texts, pa.string())
    filled = pc.fill_null(arr, "")
    offsets, data = string_buffers(filled)
    kernels = mh._byte_kernels()
    in_kernel = kernels.normalize(data, offsets, *mh.unicode_tables()[:2])[2]
    beyond_ascii = ~pc.string_is_ascii(filled).to_numpy(zero_copy_only=False)
    assert 0.1 * len(texts) < (in_kernel & beyond_ascii).sum() and 0.1 * len(texts) < (~in_kernel).sum()
    for sub in (arr, arr[1234:9876]):
        fast = mh.normalize(sub)
        assert fast.equals(mh._normalize_arrow(pc.fill_null(sub, "")))
        for norm in (fast, pc.fill_null(sub, "")):  # tokens of normalised and of raw text
            h, d = mh._word_tokens(norm)
            h_ref, d_ref = mh._word_tokens_arrow(norm)
            assert np.array_equal(h, h_ref) and np.array_equal(d, d_ref)
    sample = [t or "" for t in texts[::50]]  # the numba hash is FNV-1a of the UTF-8 bytes, mixed with the length
    expected = splitmix(np.array([fnv1a(t.encode()) ^ len(t.encode()) for t in sample], np.uint64))
    assert np.array_equal(hash_strings(pa.array(texts[::50], pa.string())), expected)


def test_the_characters_nfkc_composes_with_the_one_before_are_marks_or_conjoining_jamo():
    """`unicode_tables` takes a character only if it is no mark and no conjoining jamo, on the ground that every
    other second element of a canonical composition is a mark: checked over Python's Unicode data (and no ASCII
    character is one, which the ASCII path assumes)."""
    import unicodedata

    kind = mh.unicode_tables()[0]
    seconds = set()
    for c in range(0x110000):
        d = unicodedata.decomposition(chr(c))
        if d and not d.startswith("<") and len(d.split()) == 2:
            seconds.add(int(d.split()[1], 16))
    assert len(seconds) > 50
    assert all(s >= 0x80 and (s >= 0x10000 or kind[s] == 3) for s in seconds)


def test_unique_pairs_equals_numpy_unique_rows_with_big_ids_too():
    rng = np.random.default_rng(5)
    small = rng.integers(0, 50, size=(2_000, 2))
    assert np.array_equal(mh.unique_pairs(small), np.unique(small, axis=0))
    big = small + np.int64(2**40)  # past the 31-bit packing: the row-wise path
    assert np.array_equal(mh.unique_pairs(big), np.unique(big, axis=0))
    assert mh.unique_pairs(np.zeros((0, 2), np.int64)).shape == (0, 2)
