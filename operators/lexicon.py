"""Phrase lexicons shipped with the operators (``operators/lexicons/*.txt``), each file headed by its provenance.

A lexicon is one phrase per line (``#`` lines are comments). ``line_regex`` turns one into a whole-line matcher:
case-insensitive, with leading and trailing punctuation, symbols and digits set aside (``"Share (12)"`` matches
``share``, ``"12 Comments"`` matches ``comments``); a phrase ending in ``" *"`` matches itself followed by anything.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

LEXICON_DIR = Path(__file__).resolve().parent / "lexicons"
_EDGE = r"[\W\d_]*"  # what may stand around a phrase on its line


@lru_cache(maxsize=32)
def load_phrases(name: str) -> tuple[str, ...]:
    """The phrases of ``lexicons/<name>.txt``, lower-cased, in file order."""
    path = LEXICON_DIR / f"{name}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no lexicon {name!r} in {LEXICON_DIR}")
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return tuple(line.lower() for line in lines if line and not line.startswith("#"))


def _phrase_pattern(phrase: str) -> str:
    if phrase.endswith(" *"):
        head = phrase[:-2]
        # a word boundary after a Latin-script word ("more from" is not "more fromage"); CJK has no spaces
        return re.escape(head) + (r"\b.*" if ord(head[-1]) < 0x2E80 else ".*")
    return re.escape(phrase)


@lru_cache(maxsize=32)
def line_regex(name: str) -> re.Pattern[str]:
    """A regex whose ``fullmatch`` tells whether a (stripped) line is one of the lexicon's phrases."""
    phrases = sorted(load_phrases(name), key=len, reverse=True)  # longest first: "share this" before "share"
    alternatives = "|".join(_phrase_pattern(p) for p in phrases)
    return re.compile(f"{_EDGE}(?:{alternatives}){_EDGE}", re.IGNORECASE)
