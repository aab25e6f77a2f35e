"""Phrase lexicons: every file states its provenance, holds no site names, and matches whole lines only."""

import re

import pytest

from operators.cleanup import LineCleanup
from operators.lexicon import LEXICON_DIR, line_regex, load_phrases

LEXICONS = sorted(p.stem for p in LEXICON_DIR.glob("*.txt"))
# what a site-specific entry would look like: a domain, or the brand names of the sites in the shared gold sets
_SITE_RE = re.compile(r"\.(?:com|cn|net|org|de)\b|网易|163|sina|新浪|techcrunch|huffpost")


def test_lexicons_are_shipped():
    assert {"nav_lines", "end_headings", "comment_headings"} <= set(LEXICONS)


@pytest.mark.parametrize("name", LEXICONS)
def test_each_lexicon_states_provenance_and_names_no_site(name):
    header = (LEXICON_DIR / f"{name}.txt").read_text(encoding="utf-8").split("\n\n")[0]
    assert "Provenance:" in header and "Owner:" in header
    phrases = load_phrases(name)
    assert phrases and len(set(phrases)) == len(phrases)
    assert not [p for p in phrases if _SITE_RE.search(p)]


def test_whole_line_matching_with_counts_and_prefixes():
    nav, ends, comments = line_regex("nav_lines"), line_regex("end_headings"), line_regex("comment_headings")
    assert nav.fullmatch("Share (12)") and nav.fullmatch("责任编辑：张三") and nav.fullmatch("责任编辑张三")
    assert not nav.fullmatch("Share your thoughts with the council before Friday")
    assert ends.fullmatch("More from the newsroom") and not ends.fullmatch("more fromage")
    assert ends.fullmatch("Ähnliche Beiträge:") and ends.fullmatch("Leave a Reply")
    assert comments.fullmatch("12 Comments") and comments.fullmatch("Kommentare (3)")
    assert not comments.fullmatch("Comments on the budget were mixed")


def test_line_cleanup_owns_widget_lines():
    text = "Share (12)\nThe council approved the budget.\n责任编辑：张三\nTweet"
    assert LineCleanup().clean(text)[0] == "The council approved the budget."


def test_unknown_lexicon_is_an_error():
    with pytest.raises(FileNotFoundError):
        load_phrases("no_such_lexicon")
