"""Fast main-content extraction: pick the DOM subtree with the most "good" text and the least boilerplate.

One lxml parse and two linear passes over the elements (about 2-4 ms for a typical page), in the spirit of
readability / boilerpipe / jusText, written for this project:

1. Parse with lxml (the string is re-encoded as UTF-8 and the parser told so, so a page's own ``<meta charset>``
   cannot re-decode it); drop elements that never hold main text (script, style, nav, forms fields, ...) and
   hidden ones.
2. Paragraphs: every block-level element's own inline text (its text, its inline descendants' text, its
   children's tails) is one paragraph. A paragraph is *bad* when most of it is link text or it sits under an
   element whose class/id says boilerplate (nav, menu, footer, share, related, ...), *good* when it is long
   (jusText-like length thresholds, CJK characters weigh more), else *neutral*.
3. Each element gets its subtree's good/bad/neutral character sums; the main block is the element with the
   highest ``good - bad_weight * bad - neutral_weight * neutral`` (a maximum-scoring subtree).
4. Inside the main block, child subtrees without good text that are mostly bad are removed, then the text is
   written out with a newline at every block boundary.

``extract_main_block`` returns the text and the figures a caller needs to decide whether to trust it
(:class:`MainBlock`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import lxml.etree as etree

from operators.text import CJK_RE

# Elements whose content is never main text.
DROP_TAGS = (
    "script", "style", "noscript", "iframe", "svg", "canvas", "video", "audio", "object", "embed", "template",
    "button", "select", "option", "input", "textarea", "nav", "aside", "map", "head", "link", "meta",
)  # fmt: skip
# Block-level elements: each one's own inline text is a paragraph, and text output breaks lines at them.
BLOCK_TAGS = frozenset(
    "p div section article main td th tr table tbody thead tfoot li ul ol dl dt dd h1 h2 h3 h4 h5 h6 pre "
    "blockquote header footer form figure figcaption center address fieldset hr br body html details summary "
    "caption legend dialog".split()
)
_NEG_HINT = re.compile(
    r"(?:^|[\s_-])(?:nav|navbar|navigation|menu|menus|breadcrumbs?|crumbs?|footer|foot|sidebar|side|"
    r"widget|widgets|share|sharing|social|sns|related|recommend|recommended|popular|hot|tags?|tagcloud|"
    r"sponsor|sponsored|ads?|advert|advertisement|banner|promo|cookie|cookies|consent|gdpr|newsletter|"
    r"subscribe|subscription|login|signin|signup|register|modal|popup|toolbar|pagination|pager|copyright|"
    r"skip|masthead|topbar|header)(?:$|[\s_-])",
    re.IGNORECASE,
)
_POS_HINT = re.compile(r"article|content|main|post|entry|body|text|story|thread|message", re.IGNORECASE)
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
_SPACE_RE = re.compile(r"\s+")
_BREAKS_RE = re.compile(r"\s*\x00[\s\x00]*")


@dataclass
class MainBlock:
    text: str
    good_chars: float  # good paragraph weight in the chosen block
    page_good_chars: float  # good paragraph weight on the whole page
    bad_chars: float  # bad paragraph weight in the chosen block
    page_chars: float  # all paragraph weight on the page
    tag: str


@dataclass
class MainBlockConfig:
    long_chars: int = 80  # a paragraph at least this long (CJK weighted) is good
    bad_link_density: float = 0.5
    bad_weight: float = 1.0
    neutral_weight: float = 0.2
    cjk_weight: float = 3.0
    hinted_max_good: float = 300.0
    pruned_weight: float = 0.3  # cost of boilerplate that the pruning step removes


def _parse(html: str) -> etree._Element | None:
    parser = etree.HTMLParser(encoding="utf-8", remove_comments=True, remove_pis=True, default_doctype=False)
    data = html.encode("utf-8", "replace")
    if not data.strip():
        return None
    try:
        return etree.fromstring(data, parser=parser)
    except (etree.ParserError, ValueError):
        return None


@lru_cache(maxsize=4096)
def _negative_hint(attrs: str) -> bool:
    """A class/id string that names boilerplate (and no content word)."""
    return bool(_NEG_HINT.search(attrs)) and not _POS_HINT.search(attrs)


def extract_main_block(html: str, config: MainBlockConfig | None = None) -> MainBlock:
    cfg = config or MainBlockConfig()
    root = _parse(html)
    if root is None:
        return MainBlock("", 0, 0, 0, 0, "")
    etree.strip_elements(root, *DROP_TAGS, with_tail=True)
    body = root.find("body")
    if body is None:
        body = root
    elems = [e for e in body.iter() if isinstance(e.tag, str)]
    n = len(elems)
    index = {e: i for i, e in enumerate(elems)}
    parent = [-1] * n
    # flags: 1 = inside a link (inherited), 2 = boilerplate class/id or hidden (the element itself)
    flags = [0] * n
    for i in range(1, n):
        e = elems[i]
        p = index.get(e.getparent(), -1)
        parent[i] = p
        f = flags[p] & 1 if p >= 0 else 0
        if e.tag == "a":
            f |= 1
        attrs = e.get("class") or e.get("id")
        if e.tag in ("footer", "header") or attrs and _negative_hint(f"{attrs} {e.get('id') or ''}"):
            f |= 2
        elif e.get("hidden") is not None or ((st := e.get("style")) and _HIDDEN_STYLE.search(st)):
            f |= 2
        flags[i] = f
    cjk = bool(CJK_RE.search(html[len(html) // 3 : len(html) // 3 + 4000]))
    cjk_w = cfg.cjk_weight if cjk else 1.0
    inl = [0.0] * n  # inline text length accumulated for the element's paragraph
    inl_link = [0.0] * n
    good = [0.0] * n
    bad = [0.0] * n
    neu = [0.0] * n
    kbad = [0.0] * n  # bad / neutral weight left after pruning boilerplate-only child subtrees
    kneu = [0.0] * n
    long_chars = cfg.long_chars
    for i in range(n - 1, -1, -1):
        e = elems[i]
        t = e.text
        if t and (t := t.strip()):
            inl[i] += len(t)
            if flags[i] & 1:
                inl_link[i] += len(t)
        p = parent[i]
        tail = e.tail
        if p >= 0 and tail and (tail := tail.strip()):
            inl[p] += len(tail)
            if flags[p] & 1:
                inl_link[p] += len(tail)
        if e.tag in BLOCK_TAGS:
            length = inl[i] * cjk_w
            if length:
                if inl_link[i] > cfg.bad_link_density * inl[i]:
                    bad[i] += length
                    kbad[i] += length
                elif length >= long_chars:
                    good[i] += length
                else:
                    neu[i] += length
                    kneu[i] += length
        elif p >= 0:
            inl[p] += inl[i]
            inl_link[p] += inl_link[i]
        if flags[i] & 2 and good[i] < cfg.hinted_max_good:
            # a boilerplate-looking (or hidden) box without much long text is boilerplate as a whole
            bad[i] += good[i] + neu[i]
            kbad[i] = bad[i]
            good[i] = neu[i] = kneu[i] = 0.0
        if p >= 0:
            good[p] += good[i]
            bad[p] += bad[i]
            neu[p] += neu[i]
            if good[i] or bad[i] <= neu[i] or not (flags[i] & 2 or e.tag in BLOCK_TAGS):
                kbad[p] += kbad[i]
                kneu[p] += kneu[i]
    best, best_score = 0, float("-inf")
    bw, nw = cfg.bad_weight, cfg.neutral_weight
    for i in range(n):
        if not good[i]:
            continue
        s = good[i] - bw * kbad[i] - nw * kneu[i] - cfg.pruned_weight * (bad[i] - kbad[i])
        if s > best_score:
            best, best_score = i, s
    top = elems[best]
    lo, hi = best, best + 1
    while hi < n and _is_descendant(parent, hi, best):
        hi += 1
    removed = set()
    for j in range(lo + 1, hi):
        if not good[j] and bad[j] > neu[j] and elems[j].tag in BLOCK_TAGS:
            removed.add(j)
    skip = {elems[j] for j in removed}
    text = _serialize(top, skip)
    return MainBlock(text, good[best], good[0], bad[best], good[0] + bad[0] + neu[0], top.tag)


def _is_descendant(parent: list[int], j: int, anc: int) -> bool:
    while j > anc:
        j = parent[j]
    return j == anc


def _serialize(top: etree._Element, skip: set) -> str:
    parts: list[str] = []
    walker = etree.iterwalk(top, events=("start", "end"))
    for event, el in walker:
        tag = el.tag
        if not isinstance(tag, str):
            continue
        if event == "start":
            if el in skip:
                walker.skip_subtree()
                continue
            if tag in BLOCK_TAGS:
                parts.append("\x00")
            if el.text:
                parts.append(el.text)
        else:
            if tag in BLOCK_TAGS and el not in skip:
                parts.append("\x00")
            if el is not top and el.tail:
                parts.append(el.tail)
    text = _SPACE_RE.sub(" ", "".join(parts))
    return _BREAKS_RE.sub("\n", text).strip()
