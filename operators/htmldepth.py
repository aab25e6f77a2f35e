"""How deep a page's elements nest, checked before any extractor parses it.

Resiliparse's text extraction takes time quadratic in the nesting depth (2k nested ``<div>`` 0.06 s, 16k 5 s,
100k 7 minutes), so a page nested deeper than a real page ever is (the shared crawls peak below 100) is
refused before extraction. The check is cheap where it can be: a page has no more nesting than tags, a vectorised
count of ``<`` against ``</`` bounds the depth from above, a scan of open/close tags bounds it more tightly
(unclosed ``<p>``/``<li>`` only make it larger); only a page over those bounds is parsed (lexbor, linear) and
walked, stopping as soon as the limit is passed.
"""

from __future__ import annotations

import re

import numpy as np
from resiliparse.parse.html import HTMLTree

MAX_HTML_DEPTH = 1000
# elements that never hold children, so never add depth
VOID_ELEMENTS = frozenset("area base br col embed hr img input link meta param source track wbr".split())
# implied <html>/<head>/<body>/<tbody> and re-opened formatting elements add a few levels the tags do not show
PARSER_SLACK = 16
# a tag: closing slash, name, the rest (greedy: a lazy rest with an optional "/" group costs 3x on a page)
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)([^<>]*)>")


def bracket_depth_bound(html: str) -> int:
    """A looser, vectorised bound: every ``<`` not followed by ``/`` opens a level (void elements, comments and a
    stray ``<`` in a script too, which only raise it), every ``</`` closes one, never below 0. It is at least
    ``tag_depth_bound`` and costs a seventh of it, so most pages are cleared by it alone."""
    data = np.frombuffer(html.encode("utf-8", "replace"), dtype=np.uint8)
    opens = np.flatnonzero(data[:-1] == ord("<"))
    if not opens.size:
        return 0
    walk = np.cumsum(np.where(data[opens + 1] == ord("/"), -1, 1))
    # a walk held at 0 (a closing tag at depth 0 is ignored) is the free walk minus its running minimum below 0
    return int((walk - np.minimum(np.minimum.accumulate(walk), 0)).max())


def tag_depth_bound(html: str) -> int:
    """Maximum nesting counted from the tags alone: an upper bound of the parsed depth (up to slack)."""
    depth = deepest = 0
    for closing, name, rest in _TAG.findall(html):
        if closing:
            depth = max(depth - 1, 0)
        elif not rest.endswith("/") and name.lower() not in VOID_ELEMENTS:
            depth += 1
            deepest = max(deepest, depth)
    return deepest


def parsed_depth_exceeds(html: str, limit: int) -> bool:
    """Does the parsed tree nest deeper than ``limit``? Walks depth-first, stopping once it does."""
    stack = [(HTMLTree.parse(html).document, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        child = node.first_child
        while child is not None:
            stack.append((child, depth + 1))
            child = child.next
    return False


def nests_deeper_than(html: str, limit: int = MAX_HTML_DEPTH) -> bool:
    if html.count("<") + PARSER_SLACK <= limit:
        return False
    if bracket_depth_bound(html) + PARSER_SLACK <= limit:
        return False
    if tag_depth_bound(html) + PARSER_SLACK <= limit:
        return False
    return parsed_depth_exceeds(html, limit)
