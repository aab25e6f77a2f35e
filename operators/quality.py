"""Heuristic quality labelers with the published rules and default thresholds, made right for Chinese.

Sources (formulas, not code): Gopher (Rae et al. 2021, App. A; datatrove ``GopherQualityFilter`` /
``GopherRepetitionFilter``), C4 (Raffel et al. 2020; datatrove ``C4QualityFilter``), FineWeb (datatrove
``FineWebQualityFilter``). Each labeler writes its numeric stats plus ``<family>_reason``: None when the
document
passes, else the first failing rule as a stable snake_case reason. Thresholds are ``__init__`` kwargs; None
turns a
rule off. Labelers never drop rows (``operators.decide`` does).

CJK mode (``lang`` zh/ja when a ``lang`` column is present, else >=30% CJK characters), off with
``cjk_aware=False``
(plain English rules, for comparison):
- words: each Han/kana character is one word (``operators.text.split_words``); a whitespace split would make a
  Chinese paragraph one "word". Punctuation tokens are kept separate, and (like punctuation attached to an
  English
  whitespace word) are left out of the alphabetic-word ratio.
- mean word length: one character per word makes the 3..10 range meaningless; CJK mode uses 1..3 by default
  (``cjk_*_avg_word_length``): above 3 the "Chinese" page is dominated by long Latin/number tokens.
- stop words: Gopher's 8 English words plus the single-character entries of the zh stop-word list (的 了 是
  在 ...).
- terminal punctuation and sentence splits include 。！？…” etc.; FineWeb's short-line length counts a CJK
  character as 2 (``cjk_char_width``): 30 columns = 15 Chinese characters, which carry as much text as ~30
  Latin ones.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

import pyarrow as pa

from operators.base import Operator, Resources, register, with_columns
from operators.text import (
    CJK_RE,
    TERMINAL_PUNCT,
    is_cjk,
    is_symbol_word,
    load_stop_words,
    split_sentences,
    split_words,
)

LATIN_TERMINAL = (".", "!", "?", '"', "'")
_STRIP_PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~“”‘’«»…"


class _TextLabeler(Operator):
    """Shared __call__: one ``label(text, cjk)`` per row returning the output columns."""

    input_columns = ("text",)
    resources = Resources(num_cpus=1, batch_size=1024)
    cjk_aware: bool = True
    lang_column: str = "lang"

    def label(self, text: str, cjk: bool) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, batch: pa.Table) -> pa.Table:
        texts = batch.column("text").to_pylist()
        has_lang = self.lang_column in batch.column_names
        langs = batch.column(self.lang_column).to_pylist() if has_lang else [None] * len(texts)
        cols: dict[str, list] = {name: [] for name in self.output_columns}
        for text, lang in zip(texts, langs, strict=True):
            text = text or ""
            row = self.label(text, self.cjk_aware and is_cjk(text, lang))
            for name in cols:
                cols[name].append(row[name])
        return with_columns(batch, {k: pa.array(v, type=self.output_columns[k]) for k, v in cols.items()})


def _words(text: str, cjk: bool) -> list[str]:
    return split_words(text) if cjk else text.split()


@register("gopher_quality")
class GopherQuality(_TextLabeler):
    output_columns: ClassVar[dict[str, pa.DataType]] = {
        "gopher_cjk": pa.bool_(),
        "gopher_words": pa.int64(),
        "gopher_mean_word_length": pa.float64(),
        "gopher_symbol_word_ratio": pa.float64(),
        "gopher_bullet_lines_ratio": pa.float64(),
        "gopher_ellipsis_lines_ratio": pa.float64(),
        "gopher_alpha_words_ratio": pa.float64(),
        "gopher_stop_words": pa.int64(),
        "gopher_reason": pa.string(),
    }

    def __init__(
        self,
        min_doc_words: int | None = 50,
        max_doc_words: int | None = 100_000,
        min_avg_word_length: float | None = 3,
        max_avg_word_length: float | None = 10,
        cjk_min_avg_word_length: float | None = 1,
        cjk_max_avg_word_length: float | None = 3,
        max_symbol_word_ratio: float | None = 0.1,
        max_bullet_lines_ratio: float | None = 0.9,
        max_ellipsis_lines_ratio: float | None = 0.3,
        min_alpha_words_ratio: float | None = 0.8,
        min_stop_words: int | None = 2,
        cjk_aware: bool = True,
        lang_column: str = "lang",
    ):
        self.min_doc_words, self.max_doc_words = min_doc_words, max_doc_words
        self.min_avg, self.max_avg = min_avg_word_length, max_avg_word_length
        self.cjk_min_avg, self.cjk_max_avg = cjk_min_avg_word_length, cjk_max_avg_word_length
        self.max_symbol_word_ratio = max_symbol_word_ratio
        self.max_bullet_lines_ratio = max_bullet_lines_ratio
        self.max_ellipsis_lines_ratio = max_ellipsis_lines_ratio
        self.min_alpha_words_ratio = min_alpha_words_ratio
        self.min_stop_words = min_stop_words
        self.cjk_aware, self.lang_column = cjk_aware, lang_column
        self.en_stop = load_stop_words("en")
        self.zh_stop = load_stop_words("zh") if cjk_aware else frozenset()

    def label(self, text: str, cjk: bool) -> dict[str, Any]:
        words = _words(text, cjk)
        content = [w for w in words if not is_symbol_word(w)]
        n_words = max(1, len(words))
        # "……" is one Chinese ellipsis, not two
        n_ellipsis = text.count("...") + text.count("…") - text.count("……")
        lines = text.splitlines() or [""]
        alpha_base = content if cjk else words
        stop = sum((w in self.zh_stop) or (w.lower().strip(_STRIP_PUNCT) in self.en_stop) for w in content)
        stats = {
            "gopher_cjk": cjk,
            "gopher_words": len(content),
            "gopher_mean_word_length": sum(map(len, content)) / len(content) if content else 0.0,
            "gopher_symbol_word_ratio": max(text.count("#"), n_ellipsis) / n_words,
            "gopher_bullet_lines_ratio": sum(ln.lstrip().startswith(("•", "-", "●", "·")) for ln in lines) / len(lines),
            "gopher_ellipsis_lines_ratio": sum(ln.rstrip().endswith(("...", "…")) for ln in lines) / len(lines),
            "gopher_alpha_words_ratio": sum(any(c.isalpha() for c in w) for w in alpha_base) / max(1, len(alpha_base)),
            "gopher_stop_words": stop,
        }
        stats["gopher_reason"] = self._reason(stats, cjk, text, n_words)
        return stats

    def _reason(self, s: dict[str, Any], cjk: bool, text: str, n_words: int) -> str | None:
        min_avg, max_avg = (self.cjk_min_avg, self.cjk_max_avg) if cjk else (self.min_avg, self.max_avg)
        mean = s["gopher_mean_word_length"]
        checks = [
            (self.min_doc_words is not None and s["gopher_words"] < self.min_doc_words, "gopher_short_doc"),
            (self.max_doc_words is not None and s["gopher_words"] > self.max_doc_words, "gopher_long_doc"),
            (min_avg is not None and mean < min_avg, "gopher_below_avg_threshold"),
            (max_avg is not None and mean > max_avg, "gopher_above_avg_threshold"),
            (
                self.max_symbol_word_ratio is not None and text.count("#") / n_words > self.max_symbol_word_ratio,
                "gopher_too_many_hashes",
            ),
            (
                self.max_symbol_word_ratio is not None and s["gopher_symbol_word_ratio"] > self.max_symbol_word_ratio,
                "gopher_too_many_ellipsis",
            ),
            (
                self.max_bullet_lines_ratio is not None
                and s["gopher_bullet_lines_ratio"] > self.max_bullet_lines_ratio,
                "gopher_too_many_bullets",
            ),
            (
                self.max_ellipsis_lines_ratio is not None
                and s["gopher_ellipsis_lines_ratio"] > self.max_ellipsis_lines_ratio,
                "gopher_too_many_end_ellipsis",
            ),
            (
                self.min_alpha_words_ratio is not None and s["gopher_alpha_words_ratio"] < self.min_alpha_words_ratio,
                "gopher_below_alpha_threshold",
            ),
            (
                self.min_stop_words is not None and s["gopher_stop_words"] < self.min_stop_words,
                "gopher_few_stop_words",
            ),
        ]
        return next((reason for failed, reason in checks if failed), None)


def _dup_stats(items: list[str]) -> tuple[int, int]:
    """(number of items seen before, chars in them): the Gopher duplicate-line/paragraph measure."""
    seen: set[str] = set()
    dup, dup_chars = 0, 0
    for item in items:
        if item in seen:
            dup += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    return dup, dup_chars


@register("gopher_repetition")
class GopherRepetition(_TextLabeler):
    output_columns: ClassVar[dict[str, pa.DataType]] = {
        "gopher_dup_line_frac": pa.float64(),
        "gopher_dup_line_char_frac": pa.float64(),
        "gopher_dup_para_frac": pa.float64(),
        "gopher_dup_para_char_frac": pa.float64(),
        "gopher_top_ngram_char_frac": pa.float64(),
        "gopher_dup_ngram_char_frac": pa.float64(),
        "gopher_repetition_reason": pa.string(),
    }

    def __init__(
        self,
        dup_line_frac: float | None = 0.3,
        dup_para_frac: float | None = 0.3,
        dup_line_char_frac: float | None = 0.2,
        dup_para_char_frac: float | None = 0.2,
        top_n_grams: tuple[tuple[int, float], ...] = ((2, 0.2), (3, 0.18), (4, 0.16)),
        dup_n_grams: tuple[tuple[int, float], ...] = (
            (5, 0.15),
            (6, 0.14),
            (7, 0.13),
            (8, 0.12),
            (9, 0.11),
            (10, 0.10),
        ),
        cjk_aware: bool = True,
        lang_column: str = "lang",
    ):
        self.dup_line_frac, self.dup_para_frac = dup_line_frac, dup_para_frac
        self.dup_line_char_frac, self.dup_para_char_frac = dup_line_char_frac, dup_para_char_frac
        self.top_n_grams = tuple((int(n), float(f)) for n, f in top_n_grams)
        self.dup_n_grams = tuple((int(n), float(f)) for n, f in dup_n_grams)
        self.cjk_aware, self.lang_column = cjk_aware, lang_column

    def label(self, text: str, cjk: bool) -> dict[str, Any]:
        n_chars = max(1, len(text))
        paras = [p.strip() for p in text.strip().split("\n\n") if p.strip()]
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        para_dup, para_chars = _dup_stats(paras)
        line_dup, line_chars = _dup_stats(lines)
        # n-grams over content words; CJK characters are joined without a space, as they are written
        words = [w for w in _words(text, cjk) if not is_symbol_word(w)]
        join = "" if cjk else " "
        s: dict[str, Any] = {
            "gopher_dup_line_frac": line_dup / max(1, len(lines)),
            "gopher_dup_line_char_frac": line_chars / n_chars,
            "gopher_dup_para_frac": para_dup / max(1, len(paras)),
            "gopher_dup_para_char_frac": para_chars / n_chars,
        }
        reason = None
        for value, limit, name in (
            (s["gopher_dup_para_frac"], self.dup_para_frac, "gopher_dup_para_frac"),
            (s["gopher_dup_para_char_frac"], self.dup_para_char_frac, "gopher_dup_para_char_frac"),
            (s["gopher_dup_line_frac"], self.dup_line_frac, "gopher_dup_line_frac"),
            (s["gopher_dup_line_char_frac"], self.dup_line_char_frac, "gopher_dup_line_char_frac"),
        ):
            if reason is None and limit is not None and value > limit:
                reason = name
        top_max = 0.0
        for n, limit in self.top_n_grams:
            grams = Counter(join.join(words[i : i + n]) for i in range(len(words) - n + 1))
            if not grams:
                continue
            gram, count = grams.most_common(1)[0]
            frac = len(gram) * count / n_chars
            top_max = max(top_max, frac)
            if reason is None and frac > limit:
                reason = f"gopher_top_{n}_gram"
        dup_max = 0.0
        for n, limit in self.dup_n_grams:
            frac = _repeated_ngram_chars(words, n, join) / n_chars
            dup_max = max(dup_max, frac)
            if reason is None and frac > limit:
                reason = f"gopher_duplicated_{n}_n_grams"
        s["gopher_top_ngram_char_frac"] = top_max
        s["gopher_dup_ngram_char_frac"] = dup_max
        s["gopher_repetition_reason"] = reason
        return s


def _repeated_ngram_chars(words: list[str], n: int, join: str) -> int:
    """Chars covered by n-grams that already occurred (non-overlapping after a hit), as in Gopher."""
    seen: set[str] = set()
    repeated, i = 0, 0
    while i < len(words) - n + 1:
        gram = join.join(words[i : i + n])
        if gram in seen:
            repeated += len(gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return repeated


POLICY_SUBSTRINGS = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
    "隐私政策",
    "使用条款",
    "服务条款",
    "使用cookie",
)


@register("c4_quality")
class C4Quality(_TextLabeler):
    """C4's line rules as labels: counts which lines C4 would keep and the document-level verdict."""

    output_columns: ClassVar[dict[str, pa.DataType]] = {
        "c4_lines": pa.int64(),
        "c4_kept_lines": pa.int64(),
        "c4_kept_chars_ratio": pa.float64(),
        "c4_sentences": pa.int64(),
        "c4_reason": pa.string(),
    }

    def __init__(
        self,
        min_num_sentences: int | None = 5,
        min_words_per_line: int | None = 3,
        max_word_length: int | None = 1000,
        filter_no_terminal_punct: bool = True,
        filter_lorem_ipsum: bool = True,
        filter_javascript: bool = True,
        filter_curly_bracket: bool = True,
        filter_policy: bool = True,
        cjk_aware: bool = True,
        lang_column: str = "lang",
    ):
        self.min_num_sentences = min_num_sentences
        self.min_words_per_line = min_words_per_line
        self.max_word_length = max_word_length
        self.filter_no_terminal_punct = filter_no_terminal_punct
        self.filter_lorem_ipsum, self.filter_javascript = filter_lorem_ipsum, filter_javascript
        self.filter_curly_bracket, self.filter_policy = filter_curly_bracket, filter_policy
        self.cjk_aware, self.lang_column = cjk_aware, lang_column

    def line_ok(self, line: str, cjk: bool) -> bool:
        """C4's per-line keep rule (javascript/policy/no-terminal-punctuation/short lines go)."""
        words = _words(line, cjk)
        if self.max_word_length is not None and any(len(w) > self.max_word_length for w in words):
            return False
        terminal = TERMINAL_PUNCT if cjk else LATIN_TERMINAL
        if self.filter_no_terminal_punct and (not line.endswith(terminal) or line.endswith("...")):
            return False
        n_words = sum(not is_symbol_word(w) for w in words) if cjk else len(words)
        if self.min_words_per_line is not None and n_words < self.min_words_per_line:
            return False
        lower = line.lower()
        if self.filter_javascript and "javascript" in lower:
            return False
        return not (self.filter_policy and any(p in lower for p in POLICY_SUBSTRINGS))

    def label(self, text: str, cjk: bool) -> dict[str, Any]:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        kept = [ln for ln in lines if self.line_ok(ln, cjk)]
        sentences = sum(len(split_sentences(ln)) if cjk else len(_latin_sentences(ln)) for ln in kept)
        lower_kept = "\n".join(kept).lower()
        reason = None
        if self.filter_lorem_ipsum and "lorem ipsum" in lower_kept:
            reason = "c4_lorem_ipsum"
        elif self.filter_curly_bracket and "{" in lower_kept:
            reason = "c4_curly_bracket"
        elif self.min_num_sentences is not None and sentences < self.min_num_sentences:
            reason = "c4_too_few_sentences"
        total = sum(map(len, lines))
        return {
            "c4_lines": len(lines),
            "c4_kept_lines": len(kept),
            "c4_kept_chars_ratio": sum(map(len, kept)) / total if total else 0.0,
            "c4_sentences": sentences,
            "c4_reason": reason,
        }


def _latin_sentences(line: str) -> list[str]:
    """English-rules sentence split: CJK full stops are not sentence ends."""
    return [s for s in split_sentences(line.replace("。", "，").replace("！", "，").replace("？", "，")) if s]


@register("fineweb_quality")
class FineWebQuality(_TextLabeler):
    output_columns: ClassVar[dict[str, pa.DataType]] = {
        "fineweb_line_punct_ratio": pa.float64(),
        "fineweb_short_line_ratio": pa.float64(),
        "fineweb_char_dup_ratio": pa.float64(),
        "fineweb_list_ratio": pa.float64(),
        "fineweb_reason": pa.string(),
    }

    def __init__(
        self,
        line_punct_thr: float | None = 0.12,
        line_punct_exclude_zero: bool = False,
        short_line_thr: float | None = 0.67,
        short_line_length: int = 30,
        char_duplicates_ratio: float | None = 0.01,
        new_line_ratio: float | None = 0.3,
        cjk_char_width: int = 2,
        cjk_aware: bool = True,
        lang_column: str = "lang",
    ):
        self.line_punct_thr, self.line_punct_exclude_zero = line_punct_thr, line_punct_exclude_zero
        self.short_line_thr, self.short_line_length = short_line_thr, short_line_length
        self.char_duplicates_ratio, self.new_line_ratio = char_duplicates_ratio, new_line_ratio
        self.cjk_char_width = cjk_char_width
        self.cjk_aware, self.lang_column = cjk_aware, lang_column

    def label(self, text: str, cjk: bool) -> dict[str, Any]:
        lines = [ln for ln in text.split("\n") if ln.strip()]
        if not lines:
            return {
                "fineweb_line_punct_ratio": 0.0,
                "fineweb_short_line_ratio": 1.0,
                "fineweb_char_dup_ratio": 0.0,
                "fineweb_list_ratio": 0.0,
                "fineweb_reason": "fineweb_empty",
            }
        terminal = TERMINAL_PUNCT if cjk else LATIN_TERMINAL
        punct = sum(ln.rstrip().endswith(terminal) for ln in lines) / len(lines)
        extra = self.cjk_char_width - 1 if cjk else 0

        def width(line: str) -> int:
            return len(line) + extra * len(CJK_RE.findall(line))

        short = sum(width(ln) <= self.short_line_length for ln in lines) / len(lines)
        dup = _dup_stats(lines)[1] / max(1, len(text.replace("\n", "")))
        listy = text.count("\n") / max(1, len(_words(text, cjk)))
        reason = None
        if self.line_punct_thr is not None and punct < self.line_punct_thr:
            if not (punct == 0 and self.line_punct_exclude_zero):
                reason = "fineweb_line_punct_ratio"
        if reason is None and self.short_line_thr is not None and short > self.short_line_thr:
            reason = "fineweb_short_line_ratio"
        if reason is None and self.char_duplicates_ratio is not None and dup > self.char_duplicates_ratio:
            reason = "fineweb_char_dup_ratio"
        if reason is None and self.new_line_ratio is not None and listy > self.new_line_ratio:
            reason = "fineweb_list_ratio"
        return {
            "fineweb_line_punct_ratio": punct,
            "fineweb_short_line_ratio": short,
            "fineweb_char_dup_ratio": dup,
            "fineweb_list_ratio": listy,
            "fineweb_reason": reason,
        }
