"""MinHash signatures and LSH banding, vectorised over Arrow batches (shared by dedup and decontamination).

Pipeline for a batch of texts, with no per-token Python loop:

1. normalise: NFKC, lower case, punctuation and symbols to spaces, whitespace collapsed (pyarrow compute);
2. tokens: words (split on whitespace) or, for Chinese/Japanese text, characters (decoded from the UTF-8
   buffer with numpy); the script is chosen per text (`auto`) or forced;
3. token hashes: 64-bit FNV-1a over each *distinct* token's bytes (`datakit.hashing`; dictionary encoding);
4. shingles: n consecutive token hashes combined (a text shorter than n gives one shingle of all its tokens);
5. signatures: `num_perm` multiply-shift hashes per shingle (uint64 arithmetic, top 32 bits), min per text
   (a numba loop, texts spread over cores);
6. LSH: bands x rows chosen for recall: a pair exactly at the threshold becomes a candidate with probability
   >= 0.99 (`recall_bands`), each band hashed to 64 bits;
7. verification: every candidate is decided by the exact Jaccard of the two texts' shingle sets (sorted unique
   64-bit shingle hashes), not by the signature's estimate, so the decision at the threshold is exact.

What "Jaccard >= t" compares, so a decision can be reproduced by hand: both texts normalised (NFKC, lower case,
punctuation and symbols to spaces, whitespace collapsed); a text with at least 30% CJK characters is cut into
characters, any other into whitespace words; shingles are n consecutive tokens (`ngram`, default 1: the set of
words; `char_ngram`, default 2: character bigrams), a text shorter than n being one shingle of all its tokens;
J = |A ∩ B| / |A ∪ B| over the two sets of distinct shingles, and a pair with J >= t (equality included) is a
near duplicate. Example: 我为什么蚂蚁借呗不见了 / 为什么蚂蚁借呗不见了 share 9 of 10 bigrams: J = 0.9.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datakit.hashing import hash_strings, splitmix, string_buffers

Script = Literal["auto", "word", "char"]
EMPTY = np.uint32(0xFFFFFFFF)  # every signature value of a text with no shingles

_GOLD = np.uint64(0x9E3779B97F4A7C15)
_CJK = r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]"


@dataclass(frozen=True)
class MinHashConfig:
    num_perm: int = 128
    ngram: int = 1  # word n-grams (1: sets of words)
    char_ngram: int = 2  # character n-grams for Chinese/Japanese/Korean text
    script: Script = "auto"
    cjk_ratio: float = 0.3  # auto: a text with at least this share of CJK characters is shingled by characters
    seed: int = 1


def normalize(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """NFKC, lower case, punctuation/symbols -> space, whitespace collapsed and trimmed."""
    t = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    t = pc.fill_null(t.cast(pa.string()), "")
    if len(t) == 0:
        return t
    offsets, data = string_buffers(t)
    # texts of ASCII and the characters `unicode_tables` takes; the others left empty here
    out_offsets, out, plain = _byte_kernels().normalize(data, offsets, *unicode_tables()[:2])
    if not plain.any():
        return _normalize_arrow(t)
    if out_offsets[-1] >= 2**31:  # pragma: no cover - a batch of over 2 GB of text
        return _normalize_arrow(t)
    result = pa.StringArray.from_buffers(len(t), pa.py_buffer(out_offsets.astype(np.int32)), pa.py_buffer(out))
    if plain.all():
        return result
    other = np.nonzero(~plain)[0]
    return pc.replace_with_mask(result, pa.array(~plain), _normalize_arrow(t.take(pa.array(other))))


def _normalize_arrow(t: pa.Array) -> pa.Array:
    """`normalize` by Arrow's Unicode kernels (any text; the numba loop takes printable ASCII)."""
    t = pc.utf8_normalize(t, "NFKC")
    t = pc.utf8_lower(t)
    # punctuation/symbols (with the spaces around them) and runs of whitespace become one space; a plain
    # single space is not a match, which keeps the regex pass fast
    t = pc.replace_substring_regex(t, r"\s*[\p{P}\p{S}]+\s*|\s\s+|[\t\n\r\f\v]", " ")
    return pc.utf8_trim_whitespace(t)


@lru_cache(maxsize=1)
def unicode_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every code point of the Basic Multilingual Plane, what the numba loops need to take texts beyond ASCII
    and still equal the Arrow path: `kind` (0 a character kept as its NFKC form, lower-cased; 2 punctuation or
    symbol; 3 not taken: the text goes to Arrow), the code point it becomes, and whether Arrow's whitespace split
    breaks there.

    Derived from Arrow's own kernels (the Arrow path's definition, whatever its Unicode version): a character is
    taken when NFKC makes it one code point and Arrow lower-cases that to one code point no longer in UTF-8 than
    the character (a normalised text never grows), and neither the character nor its NFKC form is whitespace, a
    combining mark or a conjoining Hangul jamo (the characters NFKC composes with the one before: every other
    second element of a canonical composition is a mark, checked by a test over unicodedata). NFKC of a text of
    ASCII and such characters is then each character's NFKC form: nothing in it composes or reorders. (Full-width
    forms are taken this way: NFKC makes them ASCII.)"""
    n = 0x10000
    cps = np.arange(n)
    valid = (cps < 0xD800) | (cps >= 0xE000)  # surrogates are no characters
    chars = _utf8_array(cps, valid)
    nfkc = pc.utf8_normalize(chars, "NFKC")
    low = pc.utf8_lower(nfkc)

    def numpy(arr: Any) -> np.ndarray:
        return arr.to_numpy(zero_copy_only=False)

    def jamo(code: np.ndarray) -> np.ndarray:
        return ((code >= 0x1100) & (code < 0x1200)) | ((code >= 0xA960) & (code < 0xA980)) | \
            ((code >= 0xD7B0) & (code < 0xD800))

    space = numpy(pc.utf8_is_space(chars))
    taken = (valid & (cps >= 0x80) & ~space & ~jamo(cps) & ~numpy(pc.utf8_is_space(nfkc))
             & numpy(pc.equal(pc.utf8_length(nfkc), 1)) & ~jamo(_first_code_points(nfkc))
             & ~numpy(pc.match_substring_regex(chars, r"^\p{M}$")) & ~numpy(pc.match_substring_regex(nfkc, r"^\p{M}$"))
             & numpy(pc.equal(pc.utf8_length(low), 1)) & numpy(pc.less_equal(pc.binary_length(low),
                                                                             pc.binary_length(chars))))
    punct = numpy(pc.match_substring_regex(low, r"^[\p{P}\p{S}]$"))
    kind = np.where(taken, np.where(punct, 2, 0), 3).astype(np.uint8)
    return kind, np.where(taken, _first_code_points(low), 0).astype(np.uint32), space


def _utf8_array(cps: np.ndarray, valid: np.ndarray) -> pa.Array:
    """A string array of one character per code point below 0x10000 (an empty string where not `valid`), its UTF-8
    bytes written by numpy (a list of 65,536 Python strings took 15 ms)."""
    cps = cps.astype(np.uint32)
    size = np.where(~valid, 0, np.where(cps < 0x80, 1, np.where(cps < 0x800, 2, 3)))
    offsets = np.zeros(len(cps) + 1, np.int32)
    np.cumsum(size, out=offsets[1:])
    data = np.empty(offsets[-1], np.uint8)
    start = offsets[:-1]
    for width, lead, mark in ((1, 0x00, 0x7F), (2, 0xC0, 0x1F), (3, 0xE0, 0x0F)):
        at, cp = start[size == width], cps[size == width]
        data[at] = lead | ((cp >> (6 * (width - 1))) & mark)
        for k in range(1, width):
            data[at + k] = 0x80 | ((cp >> (6 * (width - 1 - k))) & 0x3F)
    return pa.StringArray.from_buffers(len(cps), pa.py_buffer(offsets), pa.py_buffer(data))


def _first_code_points(arr: pa.Array) -> np.ndarray:
    """Each string's first code point, decoded from its UTF-8 bytes (0 for an empty string)."""
    offsets, data = string_buffers(arr)
    data = np.concatenate([data, np.zeros(4, np.uint8)])
    b = [data[offsets[:-1] + k].astype(np.uint32) for k in range(4)]
    size = np.diff(offsets)
    return np.select([size == 0, b[0] < 0x80, b[0] < 0xE0, b[0] < 0xF0],
                     [np.zeros(len(size), np.uint32), b[0], ((b[0] & 0x1F) << 6) | (b[1] & 0x3F),
                      ((b[0] & 0x0F) << 12) | ((b[1] & 0x3F) << 6) | (b[2] & 0x3F)],
                     ((b[0] & 0x07) << 18) | ((b[1] & 0x3F) << 12) | ((b[2] & 0x3F) << 6) | (b[3] & 0x3F))


class _ByteKernels(NamedTuple):
    normalize: Any
    tokens: Any


@lru_cache(maxsize=1)
def _byte_kernels() -> _ByteKernels:
    """numba loops over the bytes of a string array: for ASCII text of printable characters and
    \t \n \v \f \r, and the characters beyond ASCII that `unicode_tables` takes, `normalize` (NFKC is the
    identity there); for text without control characters whose only whitespace is the space, whitespace tokens.
    Texts spread over cores. Both equal the Arrow path on the texts they take and say which those are; the rest
    go through Arrow."""
    import numba

    @numba.njit(parallel=True, cache=True, nogil=True)
    def normalize_kernel(data, offsets, ukind, ulower):  # pragma: no cover - compiled
        n = offsets.shape[0] - 1
        # 0 letter or digit, 1 whitespace of the regex's \s (space, \t, \n, \f, \r), 2 punctuation or symbol,
        # 3 anything else (the text goes to Arrow), 4 \v (not \s, yet replaced by a space on its own);
        # beyond ASCII, `ukind` and `ulower` (unicode_tables) say the same of 2- and 3-byte characters
        kind = np.full(256, 3, np.uint8)
        low = np.arange(256).astype(np.uint8)
        for c in range(0x20, 0x7F):
            kind[c] = 0 if (0x30 <= c <= 0x39 or 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A) else 2
            if 0x41 <= c <= 0x5A:
                low[c] = c + 32
        for c in (0x20, 0x09, 0x0A, 0x0C, 0x0D):
            kind[c] = 1
        kind[0x0B] = 4
        base = offsets[0]
        room = np.empty(offsets[n] - base, np.uint8)  # a text never grows: each normalised where it stood
        lengths = np.zeros(n, np.int64)
        plain = np.ones(n, np.bool_)
        for t in numba.prange(n):  # texts spread over cores
            i, end = offsets[t], offsets[t + 1]
            start = i - base
            w = start
            while i < end:  # the regex's leftmost-first matches: spaces+punct+spaces | 2+ spaces
                b = data[i]
                size, cp = 1, 0
                if b < 0x80:
                    k = kind[b]
                elif 0xC2 <= b < 0xE0 and i + 1 < end:
                    size, cp = 2, ((b & 0x1F) << 6) | (data[i + 1] & 0x3F)
                    k = ukind[cp]
                elif 0xE0 <= b < 0xF0 and i + 2 < end:
                    size, cp = 3, ((b & 0x0F) << 12) | ((data[i + 1] & 0x3F) << 6) | (data[i + 2] & 0x3F)
                    k = ukind[cp]
                else:
                    k = 3
                if k == 0:
                    if size == 1:
                        room[w] = low[b]
                        w += 1
                    else:  # what NFKC and lower case make of it, in as many bytes or fewer
                        lc = ulower[cp]
                        if lc < 0x80:
                            room[w] = lc
                            w += 1
                        elif lc < 0x800:
                            room[w] = 0xC0 | (lc >> 6)
                            room[w + 1] = 0x80 | (lc & 0x3F)
                            w += 2
                        else:
                            room[w] = 0xE0 | (lc >> 12)
                            room[w + 1] = 0x80 | ((lc >> 6) & 0x3F)
                            room[w + 2] = 0x80 | (lc & 0x3F)
                            w += 3
                    i += size
                    continue
                if k == 3:
                    plain[t] = False
                    w = start
                    break
                j = i
                while j < end and kind[data[j]] == 1:
                    j += 1
                spaces_end = j
                while k != 4 and j < end:  # punctuation after the spaces (or here), ASCII or beyond
                    c = data[j]
                    if c < 0x80:
                        if kind[c] != 2:
                            break
                        j += 1
                    elif 0xC2 <= c < 0xE0 and j + 1 < end and ukind[((c & 0x1F) << 6) | (data[j + 1] & 0x3F)] == 2:
                        j += 2
                    elif (0xE0 <= c < 0xF0 and j + 2 < end
                          and ukind[((c & 0x0F) << 12) | ((data[j + 1] & 0x3F) << 6) | (data[j + 2] & 0x3F)] == 2):
                        j += 3
                    else:
                        break
                if j > spaces_end:  # spaces, punctuation, spaces: one space
                    while j < end and kind[data[j]] == 1:
                        j += 1
                    i = j
                elif spaces_end - i >= 2:
                    i = spaces_end
                else:  # one whitespace character: a space stays, \t \n \r \f \v become one
                    i += 1
                room[w] = 0x20
                w += 1
            lo = start  # trimmed
            while lo < w and room[lo] == 0x20:
                lo += 1
            while w > lo and room[w - 1] == 0x20:
                w -= 1
            if lo > start:
                for k2 in range(w - lo):
                    room[start + k2] = room[lo + k2]
            lengths[t] = w - lo
        out_offsets = np.zeros(n + 1, np.int64)
        for t in range(n):
            out_offsets[t + 1] = out_offsets[t] + lengths[t]
        out = np.empty(out_offsets[n], np.uint8)
        for t in numba.prange(n):  # then packed together
            out[out_offsets[t]: out_offsets[t + 1]] = room[offsets[t] - base: offsets[t] - base + lengths[t]]
        return out_offsets, out, plain

    @numba.njit(parallel=True, cache=True, nogil=True)
    def token_kernel(data, offsets, uspace):  # pragma: no cover - compiled
        n = offsets.shape[0] - 1
        plain = np.ones(n, np.bool_)
        counts = np.zeros(n, np.int64)
        for t in numba.prange(n):  # texts spread over cores: count each one's tokens
            inside = False
            c_t = 0
            end = offsets[t + 1]
            for j in range(offsets[t], end):
                c = data[j]
                # control bytes, and whitespace beyond ASCII (2- and 3-byte characters: `uspace`), go to Arrow
                if c < 0x20 or c == 0x7F or (0xC2 <= c < 0xE0 and j + 1 < end
                                             and uspace[((c & 0x1F) << 6) | (data[j + 1] & 0x3F)]) or (
                        0xE0 <= c < 0xF0 and j + 2 < end
                        and uspace[((c & 0x0F) << 12) | ((data[j + 1] & 0x3F) << 6) | (data[j + 2] & 0x3F)]):
                    plain[t] = False
                    c_t = 0
                    break
                if c == 0x20:
                    inside = False
                elif not inside:
                    inside = True
                    c_t += 1
            counts[t] = c_t
        starts = np.zeros(n + 1, np.int64)
        for t in range(n):
            starts[t + 1] = starts[t] + counts[t]
        h = np.empty(starts[n], np.uint64)
        for t in numba.prange(n):  # then hash them into each text's slots
            if not plain[t]:
                continue
            j, end, k = offsets[t], offsets[t + 1], starts[t]
            while j < end:
                if data[j] == 0x20:
                    j += 1
                    continue
                x = np.uint64(0xCBF29CE484222325)  # hash_strings: FNV-1a, then mixed with the length
                m = 0
                while j < end and data[j] != 0x20:
                    x = (x ^ np.uint64(data[j])) * np.uint64(0x100000001B3)
                    m += 1
                    j += 1
                x = x ^ np.uint64(m)
                x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
                x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
                h[k] = x ^ (x >> np.uint64(31))
                k += 1
        return h, counts, plain

    return _ByteKernels(normalize_kernel, token_kernel)


def is_cjk(norm: pa.Array, ratio: float) -> np.ndarray:
    """Per text: does it have at least `ratio` CJK characters (of its non-space characters)?"""
    out = np.zeros(len(norm), bool)
    other = np.nonzero(~pc.string_is_ascii(norm).to_numpy(zero_copy_only=False))[0]  # ASCII text is never CJK
    if len(other):
        sub = norm.take(pa.array(other))
        cjk = pc.count_substring_regex(sub, _CJK).to_numpy(zero_copy_only=False)
        length = pc.utf8_length(pc.replace_substring(sub, " ", "")).to_numpy(zero_copy_only=False)
        out[other] = (cjk > 0) & (cjk >= ratio * np.maximum(length, 1))
    return out


def _word_tokens(norm: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(token hash, text index) for whitespace tokens, in order."""
    if len(norm) == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    offsets, data = string_buffers(norm)
    # texts whose only whitespace is the space here, the others through Arrow
    h, counts, plain = _byte_kernels().tokens(data, offsets, unicode_tables()[2])
    other = np.nonzero(~plain)[0]
    if len(other) == 0:
        return h, np.repeat(np.arange(len(norm), dtype=np.int64), counts)
    oh, od = _word_tokens_arrow(norm.take(pa.array(other)))
    od = other[od]
    counts[other] = np.bincount(od, minlength=len(norm))[other]
    first = np.zeros(len(norm) + 1, np.int64)
    np.cumsum(counts, out=first[1:])
    doc = np.repeat(np.arange(len(norm), dtype=np.int64), counts)
    out = np.empty(len(doc), np.uint64)
    taken = np.zeros(len(doc), bool)
    taken[first[od] + np.arange(len(od)) - np.searchsorted(od, od)] = True  # a token's slot: text start + rank
    out[taken], out[~taken] = oh, h
    return out, doc


def _word_tokens_arrow(norm: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    lists = pc.utf8_split_whitespace(norm)
    flat = pc.list_flatten(lists)
    parent = pc.list_parent_indices(lists).to_numpy().astype(np.int64)
    nonempty = pc.greater(pc.binary_length(flat), 0)
    if not pc.all(nonempty).as_py():
        flat, parent = flat.filter(nonempty), parent[nonempty.to_numpy(zero_copy_only=False)]
    if len(flat) == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    enc = pc.dictionary_encode(flat)
    token_hash = hash_strings(enc.dictionary)
    return token_hash[enc.indices.to_numpy()], parent


def _char_tokens(norm: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(char hash, text index) for every non-space character, decoded from the UTF-8 buffer."""
    offsets, data = string_buffers(norm)
    if len(data) == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    data = data[offsets[0]: offsets[-1]]
    base = offsets - offsets[0]
    lead = (data & 0xC0) != 0x80
    pos = np.nonzero(lead & (data != 0x20))[0]
    b0 = data[pos].astype(np.uint64)
    width = np.where(b0 < 0x80, 1, np.where(b0 < 0xE0, 2, np.where(b0 < 0xF0, 3, 4)))
    padded = np.concatenate([data, np.zeros(3, np.uint8)]).astype(np.uint64)
    code = b0
    for k in (1, 2, 3):
        code = code | np.where(width > k, padded[pos + k] << np.uint64(8 * k), np.uint64(0))
    parent = np.searchsorted(base, pos, side="right") - 1
    return splitmix(code), parent.astype(np.int64)


def _shingles(tok: np.ndarray, doc: np.ndarray, n: int, n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """Combine n consecutive token hashes within each text; texts shorter than n give one shingle."""
    if len(tok) == 0 or n == 1:  # a word's shingle is the word's hash
        return tok, doc
    counts = np.bincount(doc, minlength=n_docs)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    with np.errstate(over="ignore"):
        m = len(tok) - n + 1
        if m > 0:
            h = tok[:m].copy()
            for k in range(1, n):
                h = splitmix(h * _GOLD + tok[k: k + m])
            valid = doc[:m] == doc[n - 1:]
            full_h, full_doc = h[valid], doc[:m][valid]
        else:
            full_h, full_doc = np.zeros(0, np.uint64), np.zeros(0, np.int64)
        short = np.nonzero((counts > 0) & (counts < n))[0]
        if len(short):
            s_start, s_len = starts[short], counts[short]
            h = tok[s_start].copy()
            for k in range(1, n - 1 + 1):
                more = s_len > k
                idx = np.minimum(s_start + k, len(tok) - 1)
                h = np.where(more, splitmix(h * _GOLD + tok[idx]), h)
            at = np.searchsorted(full_doc, short)  # merge: both are sorted by text
            full_h, full_doc = np.insert(full_h, at, h), np.insert(full_doc, at, short.astype(np.int64))
    return full_h, full_doc


def shingle(texts: pa.Array | pa.ChunkedArray, cfg: MinHashConfig, normalized: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(shingle hash, text index) sorted by text index, for a batch of texts."""
    norm = texts if normalized else normalize(texts)
    norm = norm.combine_chunks() if isinstance(norm, pa.ChunkedArray) else norm
    n = len(norm)
    if cfg.script == "word":
        char = np.zeros(n, bool)
    elif cfg.script == "char":
        char = np.ones(n, bool)
    else:
        char = is_cjk(norm, cfg.cjk_ratio)
    parts_h, parts_d = [], []
    for mask, tokens, size in ((~char, _word_tokens, cfg.ngram), (char, _char_tokens, cfg.char_ngram)):
        idx = np.nonzero(mask)[0]
        if len(idx) == 0:
            continue
        sub = norm if len(idx) == n else norm.take(pa.array(idx))
        tok, doc = tokens(sub)
        h, d = _shingles(tok, doc, size, len(idx))
        parts_h.append(h)
        parts_d.append(idx[d] if len(idx) != n else d)
    if not parts_h:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    if len(parts_h) == 1:
        return parts_h[0], parts_d[0]
    h, d = np.concatenate(parts_h), np.concatenate(parts_d)
    order = np.argsort(d, kind="stable")
    return h[order], d[order]


@lru_cache(maxsize=16)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd multipliers
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a, b


@lru_cache(maxsize=1)
def _kernels():
    """numba kernels (signatures, band hashes), compiled on first use.

    Imported lazily: numba costs ~1 s and ~70 MB at import, which a build without MinHash should not pay.
    """
    import numba

    @numba.njit(parallel=True, cache=True, nogil=True)
    def minhash_kernel(h, seg_bounds, seg_docs, a, b, sig):  # pragma: no cover - compiled
        num_perm = a.shape[0]
        for s in numba.prange(seg_bounds.shape[0] - 1):  # one text per iteration, texts spread over cores
            mins = np.full(num_perm, np.uint64(0xFFFFFFFF))  # running minima stay in registers/L1
            for i in range(seg_bounds[s], seg_bounds[s + 1]):
                x = h[i]
                for k in range(num_perm):
                    mins[k] = min(mins[k], (a[k] * x + b[k]) >> np.uint64(32))
            for k in range(num_perm):
                sig[seg_docs[s], k] = np.uint32(mins[k])

    @numba.njit(parallel=True, cache=True, nogil=True)
    def band_kernel(sig, mult, salt, rows, out):  # pragma: no cover - compiled
        bands = out.shape[1]
        for i in numba.prange(sig.shape[0]):
            for band in range(bands):
                acc = salt[band]
                for r in range(rows):
                    c = band * rows + r
                    acc += np.uint64(sig[i, c]) * mult[c]
                out[i, band] = acc

    return minhash_kernel, band_kernel


def signatures_from_shingles(h: np.ndarray, doc: np.ndarray, n_docs: int, cfg: MinHashConfig) -> np.ndarray:
    """(n_docs, num_perm) uint32 MinHash signatures; texts without shingles get EMPTY everywhere.

    Each permutation is a multiply-add-shift hash of the 64-bit shingle hash: top 32 bits of a*x+b mod 2^64.
    """
    a, b = permutations(cfg.num_perm, cfg.seed)
    sig = np.full((n_docs, cfg.num_perm), EMPTY, np.uint32)
    if len(h) == 0:
        return sig
    seg_starts = np.concatenate([[0], np.nonzero(np.diff(doc))[0] + 1])
    seg_docs = doc[seg_starts]
    _kernels()[0](h, np.append(seg_starts, len(h)), seg_docs, a, b, sig)
    return sig


def signatures(texts: pa.Array | pa.ChunkedArray, cfg: MinHashConfig, normalized: bool = False) -> np.ndarray:
    h, d = shingle(texts, cfg, normalized)
    return signatures_from_shingles(h, d, len(texts), cfg)


def shingle_sets(h: np.ndarray, doc: np.ndarray, n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets): each text's distinct shingle hashes, sorted, in CSR layout
    (text i's set is values[offsets[i]:offsets[i + 1]]). `doc` must be sorted, as `shingle` returns it."""
    counts = np.bincount(doc, minlength=n_docs).astype(np.int64)
    bounds = np.zeros(n_docs + 1, np.int64)
    np.cumsum(counts, out=bounds[1:])
    return _set_kernels()(h.copy(), bounds)  # each text's few shingles sorted and de-duplicated, texts in parallel


@lru_cache(maxsize=1)
def _set_kernels():
    import numba

    @numba.njit(parallel=True, cache=True, nogil=True)
    def sort_unique_segments(h, bounds):  # pragma: no cover - compiled
        n = bounds.shape[0] - 1
        kept = np.zeros(n, np.int64)
        for s in numba.prange(n):  # each segment sorted and de-duplicated in place
            seg = h[bounds[s]: bounds[s + 1]]
            seg.sort()
            k = 0
            for i in range(seg.shape[0]):
                if i == 0 or seg[i] != seg[k - 1]:
                    seg[k] = seg[i]
                    k += 1
            kept[s] = k
        offsets = np.zeros(n + 1, np.int64)
        for s in range(n):
            offsets[s + 1] = offsets[s] + kept[s]
        values = np.empty(offsets[n], np.uint64)
        for s in numba.prange(n):  # then packed together
            values[offsets[s]: offsets[s + 1]] = h[bounds[s]: bounds[s] + kept[s]]
        return values, offsets

    return sort_unique_segments


@lru_cache(maxsize=1)
def _jaccard_kernel():
    """numba kernel: exact Jaccard of many pairs of sorted sets (a merge per pair)."""
    import numba

    @numba.njit(parallel=True, cache=True, nogil=True)
    def kernel(pairs, vals_a, offs_a, vals_b, offs_b, out):  # pragma: no cover - compiled
        for k in numba.prange(pairs.shape[0]):
            a, b = pairs[k, 0], pairs[k, 1]
            i, i_end = offs_a[a], offs_a[a + 1]
            j, j_end = offs_b[b], offs_b[b + 1]
            na, nb = i_end - i, j_end - j
            inter = 0
            while i < i_end and j < j_end:
                x, y = vals_a[i], vals_b[j]
                if x == y:
                    inter += 1
                    i += 1
                    j += 1
                elif x < y:
                    i += 1
                else:
                    j += 1
            union = na + nb - inter
            out[k] = inter / union if union > 0 else 0.0

    return kernel


def pair_jaccard(pairs: np.ndarray, sets_a: tuple[np.ndarray, np.ndarray],
                 sets_b: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Exact Jaccard of each (a, b) pair: a indexes `sets_a`, b indexes `sets_b` (default `sets_a`), both in
    `shingle_sets` layout (either may be memory-mapped)."""
    sets_b = sets_a if sets_b is None else sets_b
    out = np.zeros(len(pairs), np.float64)
    if len(pairs) == 0:
        return out
    pairs = np.ascontiguousarray(pairs, dtype=np.int64)
    _jaccard_kernel()(pairs, np.asarray(sets_a[0]), np.asarray(sets_a[1]), np.asarray(sets_b[0]),
                      np.asarray(sets_b[1]), out)
    return out


def verify_exact(pairs: np.ndarray, sets_a: tuple[np.ndarray, np.ndarray],
                 sets_b: tuple[np.ndarray, np.ndarray] | None = None,
                 threshold: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Keep the candidate pairs whose exact Jaccard reaches `threshold` (>=); returns (kept pairs, their J)."""
    j = pair_jaccard(pairs, sets_a, sets_b)
    ok = j >= threshold
    return pairs[ok], j[ok]


# ------------------------------------------------------------------ LSH
def candidate_probability(j: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """P(a pair of Jaccard j shares at least one of `bands` bands of `rows` signature values)."""
    return 1 - (1 - np.asarray(j, float) ** rows) ** bands


@lru_cache(maxsize=64)
def recall_bands(threshold: float, num_perm: int, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows) such that a pair exactly at `threshold` is a candidate with probability >= `recall`, with
    as many rows per band as that allows (fewest candidates below the threshold). At 0.8 and 128 permutations:
    21 bands x 6 rows, P(candidate) = 0.998 at J = 0.8 (datasketch's balanced rule, 9 x 13, gives 0.40)."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if candidate_probability(threshold, bands, rows) >= recall:
            best = (bands, rows)
    return best


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64: each band's `rows` signature values hashed together.

    A band's hash is a random linear combination of its values mod 2^64 (a universal hash of the
    vector), then mixed; one pass over the whole signature matrix.
    """
    with np.errstate(over="ignore"):
        mult = splitmix(np.arange(1, bands * rows + 1, dtype=np.uint64) * _GOLD) | np.uint64(1)
        salt = np.arange(bands, dtype=np.uint64) * _GOLD
    out = np.empty((len(sig), bands), np.uint64)
    _kernels()[1](np.ascontiguousarray(sig), mult, salt, rows, out)
    return splitmix(out)


def empty_rows(sig: np.ndarray) -> np.ndarray:
    """Texts without a single shingle (empty after normalisation): they take part in no LSH candidate."""
    return (sig == EMPTY).all(axis=1)


# ------------------------------------------------------------------ candidates, verification, clusters
def runs_of(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, run starts, run sizes): `keys[order]` sorted, and the runs of equal keys in it."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, len(keys)])
    return order, starts, sizes


def unique_pairs(pairs: np.ndarray) -> np.ndarray:
    """The distinct rows of an (m, 2) array of non-negative int64 pairs, sorted (as `np.unique(axis=0)`, which
    sorts a structured view and is four times slower than this sort of one 64-bit key per pair)."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    if len(pairs) == 0 or pairs.min() < 0 or pairs.max() >= 1 << 31:
        return np.unique(pairs, axis=0)
    key = np.unique((pairs[:, 0] << 32) | pairs[:, 1])
    return np.stack([key >> 32, key & 0xFFFFFFFF], axis=1)


def pairs_within_runs(members: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Every pair (a < b) of `members` inside each run [start, start + size), vectorised over the runs."""
    out = []
    for d in range(1, int(sizes.max()) if len(sizes) else 1):
        m = sizes > d
        cnt = sizes[m] - d
        first = np.repeat(starts[m], cnt) + (np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt))
        a, b = members[first], members[first + d]
        out.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, 2), np.int64)


def run_pairs(members: np.ndarray, starts: np.ndarray, sizes: np.ndarray, cap: int,
              split: Callable[[int, np.ndarray], np.ndarray]) -> list[np.ndarray]:
    """Candidate pairs (a < b) of LSH buckets, runs [start, start + size) of `members`: every pair of a bucket of
    2..`cap` docs; a bigger bucket's pairs from `split(start, its members)`, never a star."""
    small = (sizes >= 2) & (sizes <= cap)
    out = [pairs_within_runs(members, starts[small], sizes[small])]
    for start, size in zip(starts[sizes > cap].tolist(), sizes[sizes > cap].tolist()):
        out.append(split(start, members[start: start + size]))
    return out


def split_bucket(band: int, first: int, bands: int, hashes: Callable[[int, np.ndarray], np.ndarray],
                 members: np.ndarray, cap: int = 256) -> np.ndarray:
    """Candidate pairs (a < b) in a bucket of more than `cap` docs (a template repeated thousands of times), never
    a star: its members are grouped by their hash in the next band (`hashes(band, members)`), and again, so only
    docs sharing two, three... bands are paired in full; docs still too many after every band share one whole
    signature and are linked in a chain (each to the next: the verification decides, clusters join them)."""
    order, starts, sizes = runs_of(hashes(band, members))

    def split(_: int, group: np.ndarray) -> np.ndarray:
        if band == (first - 1) % bands:  # every band alike: one signature
            d = np.sort(group)
            return np.stack([d[:-1], d[1:]], axis=1).astype(np.int64)
        return split_bucket((band + 1) % bands, first, bands, hashes, group, cap)

    out = run_pairs(members[order], starts, sizes, cap, split)
    return np.concatenate(out) if len(out) > 1 else out[0]


def components(pairs: np.ndarray, n: int) -> np.ndarray:
    """Connected-component label per doc: vectorised union-find (each root is its component's smallest
    index; unions link the larger root to the smaller, then pointer jumping compresses paths). int32 labels
    below 2**31 docs: four bytes a doc."""
    parent = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
    if len(pairs) == 0:
        return parent
    a, b = pairs[:, 0], pairs[:, 1]
    while True:
        ra, rb = parent[a], parent[b]
        lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
        moving = lo != hi
        if not moving.any():
            break
        np.minimum.at(parent, hi[moving], lo[moving])  # union: the larger root points to the smaller
        while True:  # path compression until every node points at a root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return parent


def keep_mask(labels: np.ndarray, lengths: np.ndarray | None = None, policy: str = "first") -> np.ndarray:
    """True for the doc each cluster keeps: the first (lowest index) or the longest (ties: first)."""
    n = len(labels)
    idx = np.arange(n)
    if policy == "longest" and lengths is not None:
        order = np.lexsort((idx, -lengths.astype(np.int64), labels))
    else:
        order = np.lexsort((idx, labels))
    first = np.ones(n, bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    keep = np.zeros(n, bool)
    keep[order[first]] = True
    return keep
