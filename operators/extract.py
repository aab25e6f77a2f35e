"""Main-text extraction from HTML: our fast main-block extractor, with trafilatura as a fallback.

``method="combined"`` (default):
1. ``operators.mainblock.extract_main_block``: one lxml parse, pick the subtree with the most long,
   link-poor text, prune boilerplate children inside it (a few ms per page).
2. When that choice looks unreliable (little good text in the chosen block, with a higher bar on small pages
   where the fallback is cheap, or much of the page's good text outside it), run trafilatura on the page
   instead (about 10x slower, so only on those pages; in its fast mode on big pages); if trafilatura's text
   is under ``rescue_ratio`` of ours, trafilatura missed the main block: keep ours.
3. On our own text, cut everything from the heading of a trailing section (related links, author box, comment
   form; the headings are lexicon files in ``operators/lexicons/``) on, unless a dated list or a further story
   printed in full follows it. Boilerplate *lines* (share/login labels, counters) are left to ``line_cleanup``,
   which runs next in the recipe.
Pages over ``max_trafilatura_chars`` never fall back, so a huge page cannot stall a worker; pages over
``max_html_chars`` are truncated first (and say so in ``extract_error``); pages nested deeper than ``max_depth``
are not extracted (``extract_error="html_too_deep"``), since resiliparse's time grows with the depth squared.

Rows whose ``html`` is null but whose ``text`` is already set (WET records, JSONL text) keep that text
(``extract_method="passthrough"``). Other methods: ``mainblock`` (step 1 only), ``trafilatura``,
``resiliparse`` (plain extractors, for comparison).
"""

from __future__ import annotations

import html as html_lib
import re
import time

import pyarrow as pa
import trafilatura
from resiliparse.extract.html2text import extract_plain_text

from operators.base import Operator, Resources, register, with_columns
from operators.htmldepth import MAX_HTML_DEPTH, nests_deeper_than
from operators.lexicon import line_regex
from operators.mainblock import DATE_RE, MainBlockConfig, extract_main_block
from operators.text import CJK_RE

METHODS = ("combined", "mainblock", "trafilatura", "resiliparse")

# Headings that open the page's trailing sections (related links, author box, share bar, comment form): text from
# such a heading on is cut, when at least ``_END_MIN_SHARE`` of the text comes before it (a heading near the top is
# more likely part of a list page than the end of an article). A comments heading ("12 Comments") cuts only when
# most of the text (the article) comes before it: on a forum or comments page, the comments are the content.
# Both phrase lists are lexicon files with their provenance (``operators/lexicons/``).
_END_HEADING = line_regex("end_headings")
_COMMENTS_HEADING = line_regex("comment_headings")
_END_MIN_SHARE, _COMMENTS_MIN_SHARE = 0.3, 0.7
_PROSE_CHARS, _PROSE_LINES = 150, 3
_TITLE_RE = re.compile(r"<title[^>]*>(.*?)</title\s*>", re.IGNORECASE | re.DOTALL)
_OG_TITLE_RE = re.compile(r"<meta\s[^>]*?(?:property|name)\s*=\s*[\"']og:title[\"'][^>]*>", re.IGNORECASE | re.DOTALL)
_CONTENT_ATTR_RE = re.compile(r"content\s*=\s*(\"[^\"]*\"|'[^']*')", re.IGNORECASE | re.DOTALL)


def extract_title(html: str) -> str | None:
    """og:title when present (usually without the site-name suffix), else <title>; only the head is
    scanned."""
    head = html[:200_000]
    for tag in _OG_TITLE_RE.findall(head):
        m = _CONTENT_ATTR_RE.search(tag)
        if m and m.group(1)[1:-1].strip():
            return " ".join(html_lib.unescape(m.group(1)[1:-1]).split())
    m = _TITLE_RE.search(head)
    if m:
        title = " ".join(html_lib.unescape(re.sub(r"<[^>]+>", "", m.group(1))).split())
        return title or None
    return None


def tidy_lines(text: str) -> str:
    """Strip every line and drop blank ones (layout only: boilerplate lines are ``line_cleanup``'s job)."""
    return "\n".join(stripped for line in text.splitlines() if (stripped := line.strip()))


def cut_trailing_sections(text: str) -> str:
    """Drop everything from the heading of a trailing section (related links, author box, comments) on."""
    lines = text.split("\n")
    total, before = len(text), 0
    for i, line in enumerate(lines):
        if len(line) < 60 and before > _END_MIN_SHARE * total:
            comments = before > _COMMENTS_MIN_SHARE * total and _COMMENTS_HEADING.fullmatch(line)
            if _END_HEADING.fullmatch(line) or comments:
                following = lines[i + 1 : i + 6]
                if sum(bool(DATE_RE.search(x)) for x in following) < 3 and not _is_prose(following):
                    return "\n".join(lines[:i])
        before += len(line) + 1
    return text


def _is_prose(lines: list[str]) -> bool:
    """A "related" heading followed by several long paragraphs heads a further story printed in full (news
    pages append one), not a list of headline links or a one-paragraph author box: it is kept, as is a dated
    list (a news page's related-coverage archive)."""
    return sum(len(x) + 2 * len(CJK_RE.findall(x)) >= _PROSE_CHARS for x in lines) >= _PROSE_LINES


RESCUE_BELOW_CHARS = 100


def resiliparse_text(html: str) -> str:
    return extract_plain_text(html, main_content=True, preserve_formatting=True) or ""


def trafilatura_text(html: str, url: str | None, favor: str | None, fast: bool = False) -> str:
    return (
        trafilatura.extract(
            html,
            url=url,
            fast=fast,
            favor_precision=favor == "precision",
            favor_recall=favor == "recall",
            include_comments=True,
            include_tables=True,
            deduplicate=False,
        )
        or ""
    )


@register("extract_main_text")
class ExtractMainText(Operator):
    input_columns = ("html",)
    output_columns = {
        "text": pa.string(),
        "title": pa.string(),
        "extract_method": pa.string(),
        "extract_seconds": pa.float64(),
        "extract_error": pa.string(),
    }
    resources = Resources(num_cpus=1, batch_size=64)

    def __init__(
        self,
        method: str = "combined",
        favor: str | None = None,
        rescue_ratio: float = 0.2,
        cut_trailing: bool = True,
        sibling_share: float = MainBlockConfig.sibling_share,
        teaser_lists: bool = MainBlockConfig.teaser_lists,
        fallback_min_good: float = 100.0,
        fallback_min_share: float = 0.3,
        fallback_min_good_small: float = 150.0,
        small_page_chars: int = 100_000,
        fast_fallback_chars: int = 300_000,
        max_html_chars: int = 5_000_000,
        max_trafilatura_chars: int = 2_000_000,
        max_depth: int = MAX_HTML_DEPTH,
    ):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if favor not in (None, "precision", "recall"):
            raise ValueError(f"favor must be None, 'precision' or 'recall', got {favor!r}")
        self.method = method
        self.favor = favor
        self.rescue_ratio = rescue_ratio
        # cut our text at the heading of a trailing section (related links, author box, comments)
        self.cut_trailing = cut_trailing
        # main-block rules: siblings scoring this share of the best box join it; teaser lists are boilerplate
        self.block_config = MainBlockConfig(sibling_share=sibling_share, teaser_lists=teaser_lists)
        # fall back to trafilatura when the chosen block has less good text than this (CJK-weighted chars) ...
        self.fallback_min_good = fallback_min_good
        # ... or less than this share of the page's good text
        self.fallback_min_share = fallback_min_share
        # trafilatura's cost grows with the page, so on a small page (under ``small_page_chars``) the fallback is
        # cheap and is taken below a higher bar of good text
        self.fallback_min_good_small = fallback_min_good_small
        self.small_page_chars = small_page_chars
        # on pages over this, the fallback runs trafilatura's fast mode (no second pass with its readability and
        # jusText fallbacks), about half the cost where the cost is highest
        self.fast_fallback_chars = fast_fallback_chars
        self.max_html_chars = max_html_chars
        self.max_trafilatura_chars = max_trafilatura_chars
        # resiliparse's time grows with the square of the nesting depth: deeper pages are not extracted
        self.max_depth = max_depth

    def extract_one(
        self, html: str | None, url: str | None = None, text: str | None = None
    ) -> tuple[str, str | None, str, str | None]:
        """Return (text, title, method used, error or None); ``text`` is an already-extracted text (WET, JSONL)."""
        if not html:
            if text:
                return text, None, "passthrough", None
            return "", None, "none", "empty_html"
        errors: list[str] = []
        if len(html) > self.max_html_chars:
            html = html[: self.max_html_chars]
            errors.append("html_truncated")
        if nests_deeper_than(html, self.max_depth):  # readers refuse such pages; other callers get no text
            return "", None, "none", "html_too_deep"
        title = extract_title(html)
        if self.method == "resiliparse":
            return self._finish(_safe(resiliparse_text, errors, html), title, "resiliparse", errors)
        if self.method == "trafilatura":
            return self._finish(_safe(trafilatura_text, errors, html, url, self.favor), title, "trafilatura", errors)
        block = _safe(extract_main_block, errors, html, self.block_config)
        if not block:  # lxml could not parse it: resiliparse's parser copes with anything
            return self._finish(_safe(resiliparse_text, errors, html), title, "resiliparse", errors)
        if self.method == "mainblock":
            return self._finish(block.text, title, "mainblock", errors)
        if len(html) > self.max_trafilatura_chars:
            return self._finish(block.text, title, "mainblock_big_page", errors, html)
        min_good = self.fallback_min_good
        if len(html) < self.small_page_chars:
            min_good = max(min_good, self.fallback_min_good_small)
        confident = block.good_chars >= min_good and block.good_chars >= self.fallback_min_share * block.page_good_chars
        if confident:
            return self._finish(block.text, title, "mainblock", errors, html)
        fast = len(html) > self.fast_fallback_chars
        tr = _safe(trafilatura_text, errors, html, url, self.favor, fast)
        if len(tr) < self.rescue_ratio * len(block.text):
            return self._finish(block.text, title, "mainblock_rescue", errors, html)
        return self._finish(tr, title, "trafilatura", errors, html)

    def _finish(self, text: str, title: str | None, method: str, errors: list[str], html: str = "") -> tuple:
        if self.method in ("combined", "mainblock"):
            text = tidy_lines(text)
            if self.cut_trailing and method.startswith("mainblock"):
                text = cut_trailing_sections(text)
        if len(text.strip()) < RESCUE_BELOW_CHARS and html and self.method == "combined" and method != "resiliparse":
            # nothing looked like an article (listing pages: our block is a footer line, trafilatura finds
            # nothing): keep resiliparse's view of the page when it has clearly more to say
            rescued = _safe(resiliparse_text, errors, html)
            if len(rescued.strip()) >= 3 * max(len(text.strip()), 1) and len(rescued.strip()) >= RESCUE_BELOW_CHARS:
                text, method = rescued, "resiliparse_rescue"
        return text, title, method, "; ".join(errors) or None

    def apply(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        htmls = batch.column("html").to_pylist()
        urls = batch.column("url").to_pylist() if "url" in batch.column_names else [None] * n
        texts = batch.column("text").to_pylist() if "text" in batch.column_names else [None] * n
        cols: dict[str, list] = {name: [] for name in self.output_columns}
        for html, url, given in zip(htmls, urls, texts, strict=True):
            t0 = time.perf_counter()
            text, title, method, error = self.extract_one(html, url, given)
            cols["text"].append(text)
            cols["title"].append(title)
            cols["extract_method"].append(method)
            cols["extract_seconds"].append(time.perf_counter() - t0)
            cols["extract_error"].append(error)
        return with_columns(batch, {k: pa.array(v, type=self.output_columns[k]) for k, v in cols.items()})


def _safe(fn, errors: list[str], *args):
    """Run one extractor; a broken page must not fail the batch, so the error is recorded on the row."""
    try:
        return fn(*args)
    except Exception as exc:
        errors.append(f"{fn.__name__}: {type(exc).__name__}: {exc}"[:200])
        return "" if fn is not extract_main_block else None
