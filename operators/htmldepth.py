"""How deep a page's elements nest, checked before any extractor parses it.

Resiliparse's text extraction takes time quadratic in the nesting depth (2k nested ``<div>`` 0.06 s, 16k 5 s,
100k 7 minutes), so a page nested deeper than a real page ever is (the shared crawls peak below 100) is
refused before extraction. The check is cheap where it can be: a page has no more nesting than tags, and a
scan of open/close tags bounds the depth from above (unclosed ``<p>``/``<li>`` only make it larger); only a
page over that bound is parsed (lexbor, linear) and walked, stopping as soon as the limit is passed.
"""

from __future__ import annotations

import re

from resiliparse.parse.html import HTMLTree

MAX_HTML_DEPTH = 1000
# elements that never hold children, so never add depth
VOID_ELEMENTS = frozenset("area base br col embed hr img input link meta param source track wbr".split())
# implied <html>/<head>/<body>/<tbody> and re-opened formatting elements add a few levels the tags do not show
PARSER_SLACK = 16
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)[^<>]*?(/?)>")


def tag_depth_bound(html: str) -> int:
    """Maximum nesting counted from the tags alone: an upper bound of the parsed depth (up to slack)."""
    depth = deepest = 0
    for closing, name, self_closing in _TAG.findall(html):
        if closing:
            depth = max(depth - 1, 0)
        elif not self_closing and name.lower() not in VOID_ELEMENTS:
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
    if tag_depth_bound(html) + PARSER_SLACK <= limit:
        return False
    return parsed_depth_exceeds(html, limit)
