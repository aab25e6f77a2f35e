"""Fast main-content extraction: pick the DOM subtree with the most "good" text and the least boilerplate.

One lxml parse and two linear passes over the elements (about 2-4 ms for a typical page), in the spirit of
readability / boilerpipe / jusText, written for this project:

1. Parse with lxml (the string is re-encoded as UTF-8 and the parser told so, so a page's own ``<meta charset>``
   cannot re-decode it); drop elements that never hold main text (script, style, nav, forms fields, ...).
2. Paragraphs: every block-level element's own inline text (its text, its inline descendants' text, its
   children's tails) is one paragraph. A paragraph is *bad* when most of it is link text, *good* when it is
   long (jusText-like length thresholds, CJK characters weigh more), else *neutral*.
3. Boilerplate boxes (class/id words, in three tiers, plus form/figcaption/footer/header tags and hidden
   elements): consent dialogs always; strong words (related, share, author, footer, caption, ...) when the box
   holds under half the page's long text; weak words (header, meta, widget, ...) when it holds little long
   text; comment sections unless they hold most of it (forum threads, Q&A and comments pages). A
   boilerplate box's text counts as bad and nothing inside it can be the main block.
   A box named as the article body (itemprop=articleBody, "article-body", "entry-content") with a fair share
   of the long text makes comment sections boilerplate at any size.
4. Each element gets its subtree's good/bad/neutral sums; the main block is the element with the highest
   ``good - bad_weight * bad - neutral_weight * neutral`` (a maximum-scoring subtree). Readability-style, its
   siblings scoring a fair share of its score join it, a dated headline list right after it (a news
   page's related-coverage archive) too, and lead paragraphs just before it (a standfirst, also inside the
   article's <header>).
5. Inside the chosen boxes, boilerplate boxes and child subtrees without good text that are mostly bad (link
   lists; a single paragraph only when nearly all link) are removed, then the text is written out with a
   newline at every block boundary.

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
# Class/id words of boilerplate boxes. Strong ones (comments, related links, share bars, author boxes, footers,
# captions, ...) name boilerplate even next to a content word ("comment-content", "post-footer") and are matched
# as word prefixes ("comments", "relatedPosts"); weak ones are whole words that content boxes also use as a
# modifier ("header", "meta", "widget"), so a content word alongside ("entry-header") cancels them.
_STRONG_HINT = re.compile(
    r"(?:^|[\s_-])(?:related|recommend|popular|trending|share|sharing|"
    r"social|author|byline|breadcrumb|sidebar|footer|newsletter|subscri|advert|outbrain|"
    r"taboola|sponsor|promo|rating|caption|credit|copyright|teaser|read-?also|read-?more|more-?(?:from|on|news|"
    r"stories|articles)|also-?read|see-?also|print)"
)
# Cookie / consent dialogs: boilerplate at any size (their long legal text would otherwise win the page).
_ALWAYS_HINT = re.compile(
    r"(?:^|[\s_-])(?:cookie|consent|gdpr|onetrust|cmp-|privacy-?(?:banner|notice|center|manager))"
)
_WEAK_HINT = re.compile(
    r"(?:^|[\s_-])(?:nav|navbar|navigation|menu|menus|crumbs?|foot|side|widget|widgets|tags?|tagcloud|ads?|"
    r"banner|login|signin|signup|register|modal|popup|toolbar|pagination|pager|skip|masthead|topbar|header|"
    r"meta|date|time|bio|hot|links|tools)(?:$|[\s_-])"
)
# Comment sections: boilerplate under an article, the content itself on a forum or comments page.
_COMMENT_HINT = re.compile(r"(?:^|[\s_-])(?:comment(?!ary)|disqus|respond|reply|replies)")
_BOX_HINT = re.compile("|".join(f"(?:{r.pattern})" for r in (_ALWAYS_HINT, _STRONG_HINT, _COMMENT_HINT)))
# Class/id words (and itemprop="articleBody") that name the article body itself, as readability and trafilatura
# look for them.
_BODY_HINT = re.compile(
    r"(?:^|[\s_-])(?:article-?(?:body|content|text)|entry-content|post-?(?:content|body|text)|"
    r"story-?(?:body|content|text)|main-?content|body-?text|text-?body)(?:$|[\s_-])"
)
_POS_HINT = re.compile(r"article|content|main|post|entry|body|text|story|thread|message")
DATE_RE = re.compile(r"\d{4}[-/.年]\d{1,2}[-/.月]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{4}")
_MAX_CLASS_WORDS = 6
_CAMEL_RE = re.compile(r"([a-z0-9])([A-Z])")
# Elements that hold boilerplate whatever their class: comment/search forms, captions, page header/footer.
_STRONG_TAGS = frozenset(("form", "figcaption", "footer"))
_HEADING_TAGS = frozenset("h1 h2 h3 h4 h5 h6".split())
_PARA_TAGS = _HEADING_TAGS | {"p"}
# A paragraph or heading inside the main block is pruned as a link line only above this link share: a sentence
# around a link ("... said the <a>ministry</a>"), or a label and its link, is text.
_PARA_MAX_LINK_SHARE = 0.75
_WEAK_TAGS = frozenset(("header",))
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
# CSS utility classes that hide an element (Bootstrap, Tailwind, WordPress screen-reader text): hidden like the style
_HIDDEN_CLASS = re.compile(r"(?:^|\s)(?:hidden|d-none|is-hidden|visually-hidden|sr-only|screen-reader-text)(?:$|\s)")
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
    strong_max_share: float = 0.5  # a strongly hinted box holding more of the page's good text is kept
    headline_chars: float = 30.0  # a link paragraph this long (CJK weighted) reads as a headline
    min_headlines: int = 3
    headline_share: float = 0.7  # a box with this share of its text in headline links is a headline list
    dated_share: float = 0.5  # ... and a dated one with a date for at least this share of its headlines
    sibling_share: float = 0.2  # siblings of the best box scoring this share of its score join it
    teaser_lists: bool = True  # a box of headline links, each with a short summary, is boilerplate (see below)
    teaser_min_headlines: int = 5  # ... of at least this many headlines (a short article may hold 3 or 4 links)
    teaser_good_per_headline: float = 400.0  # ... when it holds less good text than this per headline
    teaser_paragraphs_per_headline: float = 2.0  # ... and at most this many good paragraphs per headline
    lead_levels: int = 1  # lead paragraphs are looked for before the chosen box (1) and its ancestors (2, ...)
    lead_bad_share: float = 0.2  # ... in boxes with at most this much bad text per good text
    min_uncommented_share: float = 0.5  # below this share of good text outside comment boxes, they are content
    body_min_share: float = 0.2  # ... unless an article-body box holds this share of it
    min_unhinted_share: float = 0.3  # below this share of good text outside strong boxes, strong hints are off


def _parse(html: str) -> etree._Element | None:
    parser = etree.HTMLParser(encoding="utf-8", remove_comments=True, remove_pis=True, default_doctype=False)
    data = html.encode("utf-8", "replace")
    if not data.strip():
        return None
    try:
        return etree.fromstring(data, parser=parser)
    except (etree.ParserError, ValueError):
        return None


@lru_cache(maxsize=8192)
def _hint(attrs: str) -> int:
    """8 for a consent dialog, 4 for a class/id string that names boilerplate outright, 16 for a comment
    section, 2 for a weak boilerplate word, else 0."""
    lower = attrs.lower()
    # "mainSidebar": camelCase words are words too (most class strings are lower case: no split needed)
    split = lower if lower == attrs else _CAMEL_RE.sub(r"\1-\2", attrs).lower()
    if _BOX_HINT.search(split):  # one screening search; the tiers below are tried in order only on a hit
        if _ALWAYS_HINT.search(split):
            return 8
        if _STRONG_HINT.search(split):
            return 4
        if _COMMENT_HINT.search(split):
            return 16
    attrs = lower  # weak words are short ("tag", "side"): only whole words, no camelCase split
    return 2 if _WEAK_HINT.search(attrs) and not _POS_HINT.search(attrs) else 0


@lru_cache(maxsize=8192)
def _class_hides(cls: str) -> bool:
    """A hiding utility class ("hidden", "d-none", "sr-only") in a class attribute (cached: pages repeat them)."""
    return bool(_HIDDEN_CLASS.search(cls))


@lru_cache(maxsize=8192)
def _style_hides(style: str) -> bool:
    """``display: none`` or ``visibility: hidden`` in a style attribute (cached: pages repeat them)."""
    return bool(_HIDDEN_STYLE.search(style))


def _is_body(e: etree._Element) -> bool:
    """Whether the element is named as the article body (itemprop, or a class/id such as "article-body")."""
    if e.get("itemprop") == "articleBody":
        return True
    attrs = f"{e.get('class') or ''} {e.get('id') or ''}"
    return len(attrs) > 1 and bool(_BODY_HINT.search(_CAMEL_RE.sub(r"\1-\2", attrs).lower()))


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
    # flags: 1 = inside a link (inherited); the element itself: 2 = weak boilerplate hint or hidden,
    # 4 = strong boilerplate hint, 8 = consent dialog, 16 = comment section, 32 = teaser list (set below)
    flags = [0] * n
    for i in range(1, n):
        e = elems[i]
        p = index.get(e.getparent(), -1)
        parent[i] = p
        f = flags[p] & 1 if p >= 0 else 0
        tag = e.tag
        if tag == "a" and (e.get("href") is not None or e.get("name") is None):
            f |= 1  # a named anchor without a target (<a name="q1">) is a jump target holding text, not a link
        if tag in _STRONG_TAGS:
            f |= 4
        elif tag in _WEAK_TAGS:
            f |= 2
        # a heading's id is a table-of-contents anchor made from its text ("nav_the_results_1"), not its role
        cls, ident = e.get("class"), e.get("id") if tag not in _HEADING_TAGS else None
        if cls and cls.count(" ") >= _MAX_CLASS_WORDS:
            cls = None  # a CMS taxonomy dump ("post category-news tag-newsletter ..."), not the box's role
        if cls or ident:
            f |= _hint(f"{cls or ''} {ident or ''}")
        if (cls and _class_hides(cls)) or e.get("hidden") is not None or ((st := e.get("style")) and _style_hides(st)):
            f |= 2
        flags[i] = f
    cjk = bool(CJK_RE.search(html[len(html) // 3 : len(html) // 3 + 4000]))
    cjk_w = cfg.cjk_weight if cjk else 1.0
    inl = [0.0] * n  # inline text length accumulated for the element's paragraph
    inl_link = [0.0] * n
    # pass 1: each block element's own paragraph, classified good / bad / neutral
    good = [0.0] * n
    bad = [0.0] * n
    neu = [0.0] * n
    headline = [0.0] * n  # link paragraphs as long as a headline (lists of related articles)
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
                    bad[i] = length
                    if length >= cfg.headline_chars:
                        headline[i] = length
                elif length >= long_chars:
                    good[i] = length
                else:
                    neu[i] = length
        elif p >= 0:
            inl[p] += inl[i]
            inl_link[p] += inl_link[i]
    # pass 2: raw subtree sums of good text, to size the hinted boxes
    raw = good[:]
    own_headline = headline[:]
    nhead = [1 if h else 0 for h in headline]
    for i in range(n - 1, 0, -1):
        p = parent[i]
        if not flags[i] & 8:
            raw[p] += raw[i]
        headline[p] += headline[i]
        nhead[p] += nhead[i]
    # Teaser lists ("More stories", a query loop of other posts): at least ``teaser_min_headlines`` headline links, each
    # with about one short summary paragraph (``_is_teaser_list``), are boilerplate whatever their class and size
    # (flag 32); an article has far more text per link. Counted bottom-up without the teaser lists found below (so
    # the article's box, which may hold one, is not one itself) and without link lists (headlines without
    # summaries are link text already). A dated list is a related-coverage archive, left to the rule below. On a
    # listing page, where teasers are all there is, the fallback without strong hints (mask 10) sees them again.
    if cfg.teaser_lists:
        t_good, t_head = good[:], [1 if h else 0 for h in own_headline]
        t_paras = [1 if g else 0 for g in good]
        for i in range(n - 1, 0, -1):
            if not t_head[i] and not t_good[i]:
                continue  # nothing to test or pass up (most elements)
            if _is_teaser_list(t_good[i], t_head[i], t_paras[i], cfg) and not _dated(elems[i], t_head[i], cfg):
                flags[i] |= 32
            elif (t_good[i] or t_head[i] < cfg.min_headlines) and not flags[i] & 8:  # a link list is no teaser
                p = parent[i]
                t_good[p] += t_good[i]
                t_head[p] += t_head[i]
                t_paras[p] += t_paras[i]
    # pass 3: a hinted box without much long text is boilerplate as a whole. Comment boxes holding more long
    # text than the rest of the page are the content (a forum thread, a comments or Q&A page); when even the
    # strongly hinted boxes hold nearly all of it, only the weak hints count.
    own = (good[:], bad[:], neu[:])
    # A box named as the article body (itemprop=articleBody, "article-body", "entry-content") holding a fair share
    # of the long text means comment boxes are boilerplate whatever their size (an article under a long
    # discussion).
    body_min = cfg.body_min_share * raw[0]
    has_body = any(f & 16 for f in flags) and any(raw[i] >= body_min and _is_body(elems[i]) for i in range(1, n))
    sums = _subtree_sums(elems, parent, flags, own, raw, cfg, mask=62, has_body=has_body)
    if sums[0][0] < cfg.min_uncommented_share * raw[0] and any(f & 16 for f in flags) and not has_body:
        sums = _subtree_sums(elems, parent, flags, own, raw, cfg, mask=46)
    if sums[0][0] < cfg.min_unhinted_share * raw[0]:
        sums = _subtree_sums(elems, parent, flags, own, raw, cfg, mask=10)
    good, bad, neu, kbad, kneu, dead = sums
    for i in range(1, n):  # nothing inside a boilerplate box can be the main block
        if dead[parent[i]]:
            dead[i] = True
    best, best_score = 0, float("-inf")
    bw, nw, pw = cfg.bad_weight, cfg.neutral_weight, cfg.pruned_weight
    score = [0.0] * n
    for i in range(n):
        if not good[i] or dead[i]:
            continue
        s = score[i] = good[i] - bw * kbad[i] - nw * kneu[i] - pw * (bad[i] - kbad[i])
        if s > best_score:
            best, best_score = i, s
    # Readability-style sibling inclusion: when the article is split over sibling boxes (paragraphs next to
    # the best one, or a lead box and a body box), the best box alone misses them; the parent may still lose
    # to it because of boilerplate in other siblings. Siblings that score a fair share of the best one are
    # added, with the short, link-poor siblings between them (subheadings, short paragraphs).
    chosen = [best]
    p = parent[best]
    if p >= 0:
        sibs = [j for j in range(p + 1, n) if parent[j] == p] if best else []
        keep = [j == best or (score[j] >= cfg.sibling_share * best_score and not dead[j]) for j in sibs]
        idx = [k for k, v in enumerate(keep) if v]
        if len(idx) > 1:
            chosen = [
                j
                for k, j in enumerate(sibs[idx[0] : idx[-1] + 1], idx[0])
                if keep[k] or (not dead[j] and not good[j] and kbad[j] <= kneu[j])
            ]
    # A dated list of headline links right after the article, in the same box and not marked as boilerplate,
    # is its "related coverage" archive (headline + publication date per item); news-site gold texts (and
    # trafilatura) keep it. Undated headline lists ("most popular", "recommended") are left out.
    lists = set()
    if p >= 0 and best:
        last = chosen[-1]
        for j in range(last + 1, n):
            if parent[j] != p:
                continue
            if dead[j] or not (bad[j] or neu[j] or good[j]):
                continue  # share bars, ads, spacers
            if good[j] or nhead[j] < cfg.min_headlines or headline[j] < cfg.headline_share * (bad[j] + neu[j]):
                break
            if not _dated(elems[j], nhead[j], cfg):
                break
            chosen.append(j)
            lists.add(j)
    # Lead paragraphs: a standfirst / intro box often sits just before the article body (header > p.intro, then
    # div.body); too small to pass the sibling share, it is still the article's start. Preceding siblings of the
    # chosen box (and, with lead_levels > 1, of its ancestors) join it, nearest first, while they hold link-poor
    # long text; short and empty ones are passed over, the first holding boilerplate ends the scan.
    lead: list[int] = []
    a = chosen[0]
    for _ in range(cfg.lead_levels if best else 0):
        p = parent[a]
        if p < 0:
            break
        stop = False
        for j in reversed([j for j in range(p + 1, a) if parent[j] == p]):
            if dead[j] and flags[j] & 30 == 2:
                # a box with only a weak hint (an article <header>) holds the standfirst: its own long, link-poor
                # paragraphs outside hinted boxes (captions, bylines) join, written out whole
                lead.extend(
                    k for k in range(j, _subtree_end(parent, j)) if own[0][k] and _unhinted(flags, parent, k, j)
                )
                continue
            if dead[j] or kbad[j] > cfg.lead_bad_share * good[j]:
                stop = bool(kbad[j])
                if stop:
                    break
                continue
            if good[j]:
                lead.append(j)
        if stop:
            break
        a = p
    chosen = sorted(lead) + chosen
    texts = []
    for c in chosen:
        hi = _subtree_end(parent, c)
        skip = set()
        for j in range(c + 1, hi) if not dead[c] else ():  # a dead c is a lead paragraph from a header
            if (
                # in a dated headline list, the items' weakly hinted parts ("time", "date") are its dates
                dead[j]
                and not (c in lists and flags[j] & 30 == 2 and elems[j].tag not in BLOCK_TAGS)
                or c not in lists
                and not good[j]
                and bad[j] > neu[j]
                and (elems[j].tag in BLOCK_TAGS or flags[j] & 62)
                and not (elems[j].tag in _PARA_TAGS and inl_link[j] < _PARA_MAX_LINK_SHARE * inl[j])
            ):
                skip.add(elems[j])
        texts.append(_serialize(elems[c], skip))
    text = "\n".join(t for t in texts if t)
    chosen_good = sum(good[c] for c in chosen)
    chosen_bad = sum(bad[c] for c in chosen)
    return MainBlock(text, chosen_good, good[0], chosen_bad, good[0] + bad[0] + neu[0], elems[best].tag)


def _subtree_sums(elems, parent, flags, own, raw, cfg, mask: int, has_body: bool = False):
    """Per-element subtree sums of good / bad / neutral weight, with boilerplate boxes' text counted as bad;
    kbad / kneu leave out the boilerplate-only child subtrees that pruning removes."""
    n = len(elems)
    good, bad, neu = own[0][:], own[1][:], own[2][:]
    kbad, kneu = bad[:], neu[:]
    dead = [False] * n
    strong_max = cfg.strong_max_share * raw[0]
    weak_max = cfg.hinted_max_good
    comment_max = raw[0] + 1 if has_body else strong_max
    for i in range(n - 1, 0, -1):
        f = flags[i] & mask
        if f & 40 or f & 22 and raw[i] < (comment_max if f & 16 else strong_max if f & 4 else weak_max):
            bad[i] += good[i] + neu[i]
            kbad[i] = bad[i]
            good[i] = neu[i] = kneu[i] = 0.0
            dead[i] = True
        p = parent[i]
        good[p] += good[i]
        bad[p] += bad[i]
        neu[p] += neu[i]
        if good[i] or bad[i] <= neu[i] or not (f & 62 or elems[i].tag in BLOCK_TAGS):
            kbad[p] += kbad[i]
            kneu[p] += kneu[i]
    return good, bad, neu, kbad, kneu, dead


def _is_teaser_list(good: float, headlines: int, paragraphs: int, cfg: MainBlockConfig) -> bool:
    """Headline links each with about one short summary paragraph: at least ``teaser_min_headlines`` of both, at most
    ``teaser_paragraphs_per_headline`` paragraphs and ``teaser_good_per_headline`` good text per headline."""
    return (
        headlines >= cfg.teaser_min_headlines
        and cfg.teaser_min_headlines <= paragraphs <= cfg.teaser_paragraphs_per_headline * headlines
        and good < cfg.teaser_good_per_headline * headlines
    )


def _dated(e: etree._Element, headlines: int, cfg: MainBlockConfig) -> bool:
    """Whether a box of ``headlines`` headline links carries a date for at least ``dated_share`` of them."""
    return len(DATE_RE.findall("".join(e.itertext()))) >= cfg.dated_share * headlines


def _unhinted(flags: list[int], parent: list[int], k: int, top: int) -> bool:
    """No boilerplate hint on element ``k`` or its ancestors below ``top`` (a caption in a header)."""
    while k > top:
        if flags[k] & 30:
            return False
        k = parent[k]
    return True


def _subtree_end(parent: list[int], c: int) -> int:
    """Index one past the last descendant of element ``c`` (elements are in document order)."""
    hi = c + 1
    while hi < len(parent) and _is_descendant(parent, hi, c):
        hi += 1
    return hi


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
