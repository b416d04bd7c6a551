"""Quality checks for generated texts: cleanup, length, script, refusals and boilerplate, near copies.

Each check returns a drop reason ("" when the text passes); the steps count the reasons for the manifest.
Embedding-similarity bands live in the steps (they batch the encoder).
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from difflib import SequenceMatcher

from pydantic import BaseModel, ConfigDict

_REFUSAL = re.compile(
    r"\b(I'?m sorry|I am sorry|I apologi[sz]e|I can(?:no|')t (?:help|assist|provide|answer|do that|comply)|"
    r"I am (?:not able|unable) to|I'?m (?:not able|unable) to|as an AI|as a language model|"
    r"I do not have (?:access|the ability)|I don'?t have (?:access|the ability))\b"
    r"|抱歉|对不起|作为一个(?:AI|人工智能)|我无法|我不能",
    re.I,
)
_BOILERPLATE = re.compile(
    r"^\s*(?:sure|certainly|of course|okay|ok)\b[,!.:]|^\s*here(?:'s| is| are)\b|"
    r"\b(?:rewritten|paraphrased) (?:version|text|query|sentence)\b|\brewrite (?:the|this) (?:query|text|sentence)\b"
    r"|^\s*(?:query|passage|answer|rewritten|paraphrase)\s*:",
    re.I,
)
_WRAP = re.compile(r'^\s*(?:["“”\'«»`]+)(.*?)(?:["“”\'«»`]+)\s*$', re.S)
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+", re.U)


class QualityConfig(BaseModel):
    """Bounds shared by the generator steps (each step adds its own similarity bands)."""

    model_config = ConfigDict(extra="forbid")
    min_chars: int = 8
    max_chars: int = 2000
    max_char_ratio: float | None = None  # e.g. 3.0: a paraphrase at most 3x (and at least 1/3) its source's length
    same_script: bool = True  # the output's main script (Latin, Han, Cyrillic, ...) equals the source's
    reject_refusals: bool = True
    reject_boilerplate: bool = True
    copy_ratio: float = 0.9  # character-level similarity (difflib ratio on normalised text) at or above = copy


def clean(text: str | None) -> str:
    """Trim whitespace, and the quotes a model wraps around an answer (unless the text quotes inside)."""
    if not text:
        return ""
    text = text.strip()
    match = _WRAP.match(text)
    if match and '"' not in match.group(1):
        text = match.group(1).strip()
    return text


def main_script(text: str) -> str:
    """The script most letters of the text belong to ("Latin", "Han", "Cyrillic", ...; "" when no letters).
    Kana counts as Japanese and Hangul as Korean, so mixed Han/kana text is Japanese."""
    counts: Counter[str] = Counter()
    for ch in text:
        if not ch.isalpha():
            continue
        name = unicodedata.name(ch, "")
        if not name:
            continue
        word = name.split(" ", 1)[0]
        if word == "CJK":
            word = "Han"
        elif word in ("HIRAGANA", "KATAKANA"):
            word = "Japanese"
        elif word == "HANGUL":
            word = "Korean"
        counts[word.title() if word.isupper() else word] += 1
    if not counts:
        return ""
    if counts.get("Japanese", 0) >= 0.1 * sum(counts.values()):
        return "Japanese"
    return counts.most_common(1)[0][0]


def normalise(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def copy_ratio(a: str, b: str) -> float:
    """Similarity of two texts' normalised characters (1.0 = same words in the same order)."""
    na, nb = normalise(a), normalise(b)
    if not na or not nb:
        return 0.0
    if na == nb:
        return 1.0
    return SequenceMatcher(None, na, nb, autojunk=False).ratio()


def check(text: str, source: str, cfg: QualityConfig, copy_of: list[str] = ()) -> str:
    """The first failed check's reason, or "" when the generated `text` passes.

    `source` is the text it was generated from (script and length ratio); `copy_of` are texts it must not copy."""
    if not text.strip():
        return "empty"
    n = len(text)
    if n < cfg.min_chars:
        return "too_short"
    if n > cfg.max_chars:
        return "too_long"
    if cfg.max_char_ratio and source:
        ratio = n / max(1, len(source))
        if ratio > cfg.max_char_ratio or ratio < 1 / cfg.max_char_ratio:
            return "length_ratio"
    if cfg.reject_refusals and _REFUSAL.search(text):
        return "refusal"
    if cfg.reject_boilerplate and _BOILERPLATE.search(text):
        return "boilerplate"
    if cfg.same_script and source:
        want, got = main_script(source), main_script(text)
        if want and got != want:
            return "wrong_script"
    for other in copy_of:
        if other and copy_ratio(text, other) >= cfg.copy_ratio:
            return "near_copy"
    return ""
