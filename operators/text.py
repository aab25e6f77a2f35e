"""Shared text helpers for the text operators: CJK-aware word, sentence and line splitting, stop-word loading.

Why CJK-aware: Chinese and Japanese are written without spaces, so a whitespace split turns a whole
paragraph into
one "word" and every word-based rule (Gopher word count, mean word length, stop words, C4 words per line)
fails for
good pages. Here each Han ideograph or kana character is one token (the tokenizer Gopher-style rules then
see is
"one character, one word"); runs of other letters/digits are words as usual, and punctuation runs are tokens
too
(the rules decide whether a token is a symbol).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from core.config import data_dir

# The one definition of CJK text (each character a token, no spaces between words): Han ideographs (unified,
# extensions A-F in the BMP and the supplementary planes, compatibility ideographs) and kana (hiragana, katakana,
# its phonetic extensions and half-width forms). Hangul is space-separated, so Korean keeps whitespace words.
CJK_RANGES = (
    (0x3040, 0x30FF),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0x31F0, 0x31FF),
    (0xFF66, 0xFF9F),
    (0x20000, 0x323AF),
)
CJK_CHARS = "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in CJK_RANGES)  # for regex character classes
CJK_RE = re.compile(f"[{CJK_CHARS}]")
# one CJK char | a run of non-space, non-CJK chars (a Latin word with its punctuation attached, as a split()
# gives)
_WORD_RE = re.compile(f"[{CJK_CHARS}]|[^\\s{CJK_CHARS}]+")
CJK_LANGS = frozenset({"zh", "ja", "zh-cn", "zh-tw", "yue", "wuu", "lzh"})

# Terminal punctuation: Latin plus the CJK full-width forms and closing quotes/brackets that end a sentence.
TERMINAL_PUNCT = (".", "!", "?", '"', "'", "。", "！", "？", "…", "”", "’", "」", "』", "；", "．")
# A sentence ends after one of these (kept with the sentence), optionally followed by closing quotes.
_SENT_RE = re.compile(r"[^.!?。！？…]*(?:[.!?]+(?=\s|$)|[。！？…]+)[”’」』\"')）]*|[^.!?。！？…]+$|\S+")

# Everything Python's str.isalnum() rejects counts as a symbol char; CJK chars are isalpha() already.
PUNCT_CHARS = frozenset(
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
    "、。，．；：？！…—–－·‘’“”「」『』（）［］【】《》〈〉〔〕｛｝〖〗～￥％＃＆＊＋＝／＼｜＠"
    "•·●○■□◆◇▪►▶★☆→←↑↓«»¡¿"
)


def cjk_ratio(text: str) -> float:
    """Share of non-space characters that are CJK ideographs/kana."""
    non_space = len("".join(text.split()))
    if non_space == 0:
        return 0.0
    return len(CJK_RE.findall(text)) / non_space


def is_cjk(text: str, lang: str | None = None, threshold: float = 0.3) -> bool:
    """CJK mode: ``lang`` decides when given, else the CJK character ratio (0.3 keeps mixed zh/en pages
    CJK)."""
    if lang:
        return lang.lower() in CJK_LANGS or lang.lower().startswith(("zh", "ja"))
    return cjk_ratio(text[:20_000]) >= threshold


def split_words(text: str) -> list[str]:
    """Whitespace words, except that each CJK character is its own word."""
    return _WORD_RE.findall(text)


def is_symbol_word(word: str) -> bool:
    return all(c in PUNCT_CHARS or not c.isalnum() for c in word)


def split_lines(text: str) -> list[str]:
    return text.splitlines()


def split_sentences(text: str) -> list[str]:
    """Sentences ending in Latin (followed by space/end) or CJK terminal punctuation; no abbreviation
    handling."""
    return [s.strip() for s in _SENT_RE.findall(text) if s.strip()]


def ends_with_terminal(line: str) -> bool:
    return line.rstrip().endswith(TERMINAL_PUNCT)


def _read_list(path: Path) -> list[str]:
    return [w for w in (line.strip() for line in path.read_text(encoding="utf-8").splitlines()) if w]


@lru_cache(maxsize=8)
def load_stop_words(lang: str, path: str | None = None) -> frozenset[str]:
    """Stop words for the Gopher rule.

    en: Gopher's 8 words. zh/ja: the single-ideograph entries of ``stopwords/zh/cn_stopwords.txt`` (213
    function
    words such as 的 了 是 在 和): with one-character tokens only single characters can match a token.
    """
    if path:
        return frozenset(_read_list(Path(path)))
    root = data_dir() / "lexicons" / "stopwords"
    if lang in ("zh", "ja"):
        words = _read_list(root / "zh" / "cn_stopwords.txt")
        return frozenset(w for w in words if len(w) == 1 and CJK_RE.match(w))
    return frozenset(_read_list(root / "en" / "gopher_stopwords.txt"))
