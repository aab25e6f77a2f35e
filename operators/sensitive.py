"""Sensitive-content and PII labelers.

``sensitive_content`` matches big keyword lists (default: C4's LDNOOBW en list, LDNOOBW zh, and the 17
categories of
the Chinese sensitive-word lexicon, ~87k entries) without a 87k-way regex: entries are indexed by their
first two
characters; a scan looks each text position's 2-char prefix up in a dict and only then tries the entry lengths
that start with it (longest first, non-overlapping). Latin entries must match whole words (C4's rule), CJK
entries
match as substrings (no spaces to anchor on). One-character entries are skipped: they match everywhere.
"""

from __future__ import annotations

import re
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

import pyarrow as pa

from core.config import data_dir
from operators.base import Operator, Resources, register, with_columns

# Categories of the Chinese sensitive-word collection used by default. Left out on purpose: tencent_temp,
# netease_frontend_filter, gfw_supplement and supplement list everyday words (一个, 政府, 互联网) and flagged 73 of
# 74 ordinary 163.com news pages; illegal_urls is a URL list; livelihood/covid19/other/advertising are topical.
DEFAULT_ZH_CATEGORIES = (
    "pornography",
    "pornography_type",
    "violence_terrorism",
    "guns_explosives",
    "reactionary",
    "political",
    "corruption",
)


def default_lexicons() -> list[str]:
    lex = data_dir() / "lexicons"
    return [
        str(lex / "badwords" / "ldnoobw" / "en_c4.txt"),
        str(lex / "badwords" / "ldnoobw" / "zh.txt"),
        *(str(lex / "sensitive-zh" / "konsheng" / f"{name}.txt") for name in DEFAULT_ZH_CATEGORIES),
    ]


def _category(path: Path) -> str:
    if path.parent.name == "ldnoobw":
        return f"badwords_{path.stem.split('_')[0]}"
    return path.stem


class KeywordMatcher:
    """Exact multi-keyword matcher over lower-cased text (2-char prefix index; see module docstring)."""

    def __init__(self, entries: dict[str, set[str]], min_chars: int = 2):
        self.categories: dict[str, tuple[str, ...]] = {}
        lengths: dict[str, set[int]] = defaultdict(set)
        for entry, cats in entries.items():
            key = entry.lower().strip()
            if len(key) < min_chars:
                continue
            self.categories[key] = tuple(sorted(set(self.categories.get(key, ())) | cats))
            lengths[key[:2]].add(len(key))
        self.lengths = {k: sorted(v, reverse=True) for k, v in lengths.items()}

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """Non-overlapping (start, end, entry) matches, longest entry first at each position."""
        low = text.lower()
        n, i, hits = len(low), 0, []
        lengths, cats = self.lengths, self.categories
        while i < n - 1:
            cand = lengths.get(low[i : i + 2])
            if cand:
                for length in cand:
                    piece = low[i : i + length]
                    if piece in cats and (not piece.isascii() or _word_bounded(low, i, i + length)):
                        hits.append((i, i + length, piece))
                        i += length - 1
                        break
            i += 1
        return hits


def _word_bounded(text: str, start: int, end: int) -> bool:
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    return not (before.isalnum() or after.isalnum())


@lru_cache(maxsize=4)
def load_matcher(paths: tuple[str, ...], min_chars: int = 2) -> KeywordMatcher:
    """Build (once per process) a matcher from files or folders of one-entry-per-line lists."""
    entries: dict[str, set[str]] = defaultdict(set)
    for p in map(Path, paths):
        files = sorted(p.glob("*.txt")) if p.is_dir() else [p]
        for f in files:
            cat = _category(f)
            for line in f.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    entries[line.strip()].add(cat)
    return KeywordMatcher(entries, min_chars=min_chars)


@register("sensitive_content")
class SensitiveContent(Operator):
    input_columns = ("text",)
    output_columns = {
        "sensitive_hits": pa.int64(),
        "sensitive_categories": pa.list_(pa.string()),
        "sensitive_ratio": pa.float64(),
    }
    # the matcher takes ~1 s to build: keep it in an actor
    resources = Resources(num_cpus=1, batch_size=512, stateful=True)

    def __init__(
        self,
        lexicons: list[str] | None = None,
        patterns: dict[str, str] | None = None,
        min_entry_chars: int = 2,
    ):
        self.matcher = load_matcher(tuple(lexicons or default_lexicons()), min_entry_chars)
        self.patterns = {cat: re.compile(p, re.IGNORECASE) for cat, p in (patterns or {}).items()}

    def label(self, text: str) -> tuple[int, list[str], float]:
        hits = self.matcher.find(text)
        cats: set[str] = set()
        chars = 0
        for start, end, entry in hits:
            cats.update(self.matcher.categories[entry])
            chars += end - start
        n_hits = len(hits)
        for cat, pattern in self.patterns.items():
            for m in pattern.finditer(text):
                n_hits += 1
                chars += m.end() - m.start()
                cats.add(cat)
        return n_hits, sorted(cats), min(1.0, chars / len(text)) if text else 0.0

    def apply(self, batch: pa.Table) -> pa.Table:
        out = [self.label(t or "") for t in batch.column("text").to_pylist()]
        return with_columns(
            batch,
            {
                "sensitive_hits": pa.array([o[0] for o in out], type=pa.int64()),
                "sensitive_categories": pa.array([o[1] for o in out], type=pa.list_(pa.string())),
                "sensitive_ratio": pa.array([o[2] for o in out], type=pa.float64()),
            },
        )


_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def valid_cn_id(number: str) -> bool:
    """GB 11643-1999: 17 digits + check char (mod 11), with a plausible birth date (YYYYMMDD at 6..14)."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    year, month, day = int(number[6:10]), int(number[10:12]), int(number[12:14])
    if not (1900 <= year <= 2100 and 1 <= month <= 12 and 1 <= day <= 31):
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == number[17].upper()


def _valid_ip(s: str) -> bool:
    return all(int(part) <= 255 and (part == "0" or not part.startswith("0")) for part in s.split("."))


# (type, placeholder, pattern, validator); earlier types win where spans overlap
_PII_RULES: tuple[tuple[str, str, re.Pattern[str], object], ...] = (
    (
        "email",
        "<EMAIL>",
        re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
        None,
    ),
    ("cn_id", "<ID_NUMBER>", re.compile(r"(?<![0-9A-Za-z])\d{17}[0-9Xx](?![0-9A-Za-z])"), valid_cn_id),
    ("phone", "<PHONE>", re.compile(r"(?<![\d+])(?:\+?86[ -]?)?1[3-9]\d{9}(?!\d)"), None),
    (
        "phone",
        "<PHONE>",
        re.compile(
            r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}"
            r"|\(\d{3}\) ?\d{3}[ .-]\d{4})(?!\d)"
        ),
        None,
    ),
    ("ip", "<IP>", re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])"), _valid_ip),
)


@register("pii")
class PII(Operator):
    """Finds e-mails, phone numbers (international with +, Chinese mobile), Chinese ID numbers, optionally
    IPs."""

    input_columns = ("text",)
    output_columns = {"pii_count": pa.int64(), "pii_types": pa.list_(pa.string())}
    resources = Resources(num_cpus=1, batch_size=1024)

    def __init__(self, mask: bool = False, detect_ip: bool = False):
        self.mask = mask
        self.rules = [r for r in _PII_RULES if detect_ip or r[0] != "ip"]
        self.output_columns = {**type(self).output_columns, **({"text": pa.string()} if mask else {})}

    def find(self, text: str) -> list[tuple[int, int, str, str]]:
        spans: list[tuple[int, int, str, str]] = []
        for kind, placeholder, pattern, validator in self.rules:
            for m in pattern.finditer(text):
                if validator is not None and not validator(m.group()):  # type: ignore[operator]
                    continue
                if any(m.start() < e and s < m.end() for s, e, _, _ in spans):
                    continue
                spans.append((m.start(), m.end(), kind, placeholder))
        return sorted(spans)

    def label(self, text: str) -> tuple[int, list[str], str]:
        spans = self.find(text)
        if self.mask and spans:
            parts, last = [], 0
            for start, end, _, placeholder in spans:
                parts += [text[last:start], placeholder]
                last = end
            text = "".join(parts) + text[last:]
        return len(spans), sorted({s[2] for s in spans}), text

    def apply(self, batch: pa.Table) -> pa.Table:
        out = [self.label(t or "") for t in batch.column("text").to_pylist()]
        cols: dict[str, pa.Array] = {
            "pii_count": pa.array([o[0] for o in out], type=pa.int64()),
            "pii_types": pa.array([o[1] for o in out], type=pa.list_(pa.string())),
        }
        if self.mask:
            cols["text"] = pa.array([o[2] for o in out], type=pa.string())
        return with_columns(batch, cols)
