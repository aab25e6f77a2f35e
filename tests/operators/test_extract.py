"""Extraction on real benchmark pages (a sample, to stay fast); the full comparison is
tests/benchmarks/extraction.py."""

import time

import pyarrow as pa
import pytest
from benchmarks import extraction as bench  # tests/ is on pytest's pythonpath

from operators.base import RecipeError, build_operator
from operators.extract import ExtractMainText, cut_trailing_sections, extract_title


@pytest.fixture(scope="module")
def cx_pages() -> list[tuple[str, str | None, str]]:
    return list(bench.load_set("cx-extractor", limit=12))


@pytest.fixture(scope="module")
def magic_pages() -> list[tuple[str, str | None, str]]:
    return list(bench.load_set("magic-html", limit=25))


def test_batch_columns_and_types(cx_pages):
    batch = pa.table({"html": [p[0] for p in cx_pages] + [None], "url": [p[1] for p in cx_pages] + [None]})
    out = build_operator("extract_main_text")(batch)
    for name, typ in ExtractMainText.output_columns.items():
        assert out.schema.field(name).type == typ
    assert out.num_rows == batch.num_rows
    assert out.column("extract_error").to_pylist()[-1] == "empty_html"
    assert out.column("text").to_pylist()[-1] == ""
    assert all(e is None for e in out.column("extract_error").to_pylist()[:-1])
    assert all("_网易财经" in t for t in out.column("title").to_pylist()[:-1])


def test_combined_beats_plain_extractors_on_chinese_news(cx_pages):
    scores = {}
    for method in ("combined", "trafilatura", "resiliparse"):
        op = ExtractMainText(method=method)
        f1 = [bench.shingle_f1(op.extract_one(h, u)[0], g) for h, u, g in cx_pages]
        scores[method] = sum(f1) / len(f1)
    assert scores["combined"] > 0.85
    assert scores["combined"] >= max(scores["trafilatura"], scores["resiliparse"])


def test_combined_quality_on_magic_html_sample(magic_pages):
    op = ExtractMainText()
    f1 = [bench.shingle_f1(op.extract_one(h, u)[0], g) for h, u, g in magic_pages]
    assert sum(f1) / len(f1) > 0.7


def test_huge_page_does_not_stall(magic_pages):
    html = magic_pages[0][0]
    body = html[html.lower().find("<body") :]
    huge = html + body * (20_000_000 // len(body) + 1)  # > 20 MB
    op = ExtractMainText(max_html_chars=5_000_000, max_trafilatura_chars=2_000_000)
    t0 = time.perf_counter()
    text, _, method, error = op.extract_one(huge)
    assert time.perf_counter() - t0 < 10
    assert method == "mainblock_big_page" and error == "html_truncated" and text


def test_text_rows_pass_through():
    """WET and JSONL rows arrive with html null and text set by the reader: the text is kept as it is."""
    batch = pa.table(
        {
            "html": [None, None, "<html><body><p>" + "Main text of the page, long enough to count. " * 5 + "</p>"],
            "text": ["Already extracted text.\nSecond line.", None, None],
            "url": [None, None, None],
        }
    )
    out = ExtractMainText()(batch)
    assert out.column("text").to_pylist()[0] == "Already extracted text.\nSecond line."
    assert out.column("extract_method").to_pylist()[:2] == ["passthrough", "none"]
    assert out.column("extract_error").to_pylist() == [None, "empty_html", None]
    assert out.column("text").to_pylist()[1] == ""
    assert out.column("text").to_pylist()[2].startswith("Main text of the page")


def test_fast_path_skips_boilerplate():
    html = (
        "<html><body><div class='nav'><a href='/'>Home</a> <a href='/news'>News</a></div>"
        "<div id='content'><h1>Title</h1><p>" + "The council approved the budget after a long debate. " * 4 + "</p>"
        "<p>" + "Residents will see the changes next year, officials said. " * 3 + "</p></div>"
        "<div class='related'><a href='/a'>Another story about something else entirely</a></div>"
        "<footer>Copyright 2024 Example News. All rights reserved.</footer></body></html>"
    )
    text, _, method, error = ExtractMainText().extract_one(html)
    assert method == "mainblock" and error is None
    assert "council approved" in text and "Residents will see" in text
    assert "Home" not in text and "Another story" not in text and "Copyright" not in text


def test_title_prefers_og_title():
    html = '<head><title>Page - Site</title><meta property="og:title" content="Page &amp; Co"></head>'
    assert extract_title(html) == "Page & Co"
    assert extract_title("<title> 新闻 标题 </title>") == "新闻 标题"
    assert extract_title("<p>no head</p>") is None


def test_unknown_method_and_option_rejected():
    with pytest.raises(ValueError):
        ExtractMainText(method="magic")
    with pytest.raises(RecipeError):
        build_operator("extract_main_text", {"methd": "combined"})


def test_boilerplate_boxes_dropped_but_comment_threads_kept():
    para = "The council approved the budget after a long debate about schools and roads. "
    article = (
        "<html><body><div class='cookie-consent'><p>" + "We use cookies to personalise content and ads. " * 20 + "</p>"
        "</div><article><p>" + para * 3 + "</p><p>" + para * 2 + "</p>"
        "<figure><figcaption>Photo: City Hall press office archive picture</figcaption></figure>"
        "<div class='author-box'><p>" + "Jane Doe writes about local politics for the paper. " * 2 + "</p></div>"
        "</article><div class='comments'><p>" + "I disagree with the council on this one, sadly. " * 2 + "</p></div>"
        "</body></html>"
    )
    text = ExtractMainText(method="mainblock").extract_one(article)[0]
    assert "council approved" in text
    assert not any(s in text for s in ("cookies", "Photo:", "Jane Doe", "I disagree"))
    thread = (
        "<html><body><div class='post'><p>How do I fix my bike chain?</p></div>"
        + "".join(f"<div class='comment'><p>Reply {i}: " + para * 2 + "</p></div>" for i in range(4))
        + "</body></html>"
    )
    text = ExtractMainText(method="mainblock").extract_one(thread)[0]
    assert text.count("Reply") == 4


def test_standfirst_in_header_and_article_body_hint():
    para = "The council approved the budget after a long debate about schools and roads. "
    lead = "A short summary of the decision that the council took on Tuesday evening, for readers in a hurry."
    html = (
        "<html><body><div class='wrap'><header><h1>Budget passed</h1><p>" + lead + "</p>"
        "<figure><figcaption>" + "Photo of the city hall taken by the press office of the city. " + "</figcaption>"
        "</figure></header><div itemprop='articleBody'><p>" + para * 3 + "</p><p>" + para * 2 + "</p></div></div>"
        "<ul class='commentsList'>"
        + "".join(f"<li><p>Comment {i}: " + para * 2 + "</p></li>" for i in range(3))
        + "</ul></body></html>"
    )
    text = ExtractMainText(method="mainblock").extract_one(html)[0]
    assert text.startswith(lead) and "council approved" in text  # the standfirst leads the text
    assert "Photo of" not in text and "Comment" not in text  # captions and comments stay out


def test_trailing_sections_cut_unless_a_full_story_follows():
    body = "\n".join(["The council approved the budget after a long debate about schools and roads." * 2] * 4)
    story = "\n".join(["A second story printed in full, with paragraphs as long as the first one's." * 3] * 3)
    links = "\n".join(f"Another headline number {i}" for i in range(5))
    assert cut_trailing_sections(f"{body}\nRelated articles\n{links}") == body
    assert cut_trailing_sections(f"{body}\nRelated articles\n{story}").endswith(story)


@pytest.mark.parametrize("depth", [20_000, 100_000])
def test_deep_nesting_is_refused_in_bounded_time(depth):
    from malformed_warcs import deep_html_page

    started = time.perf_counter()
    text, _, method, error = ExtractMainText().extract_one(deep_html_page(depth).decode())
    assert time.perf_counter() - started < 2, "resiliparse alone takes 9 s at 20k and 7 min at 100k"
    assert (text, method, error) == ("", "none", "html_too_deep")


def test_nesting_below_the_limit_still_extracts():
    from malformed_warcs import deep_html_page

    assert "deep" in ExtractMainText().extract_one(deep_html_page(200).decode())[0]


def _teasers(count: int) -> str:
    return "".join(
        f"<div class='card'><h3><a href='/story/{i}'>Another headline about story number {i} in the city</a></h3>"
        f"<p>A short summary of story {i}, one sentence long, that invites the reader to click through to it.</p>"
        "</div>"
        for i in range(count)
    )


def test_teaser_list_after_the_article_is_dropped_but_a_listing_page_keeps_its_teasers():
    para = "The council approved the budget after a long debate about schools, roads and the new library. "
    article = "".join(f"<p>{para * 2}Paragraph {i}.</p>" for i in range(6))
    page = f"<html><body><div class='wrap'><article>{article}</article><div>{_teasers(6)}</div></div></body></html>"
    text = ExtractMainText(method="mainblock").extract_one(page)[0]
    assert "Paragraph 5." in text and "short summary" not in text
    with_teasers = ExtractMainText(method="mainblock", teaser_lists=False).extract_one(page)[0]
    assert "short summary of story 3" in with_teasers  # the rule, not something else, removed them
    listing = f"<html><body><div class='wrap'>{_teasers(8)}</div></body></html>"
    assert "short summary of story 7" in ExtractMainText(method="mainblock").extract_one(listing)[0]


def test_vectorised_depth_bound_is_never_below_the_tag_scan(magic_pages):
    from malformed_warcs import deep_html_page

    from operators.htmldepth import bracket_depth_bound, tag_depth_bound

    for html in [p[0] for p in magic_pages] + [deep_html_page(300).decode(), "<p>a < b</p></div></div><div>"]:
        assert bracket_depth_bound(html) >= tag_depth_bound(html)
