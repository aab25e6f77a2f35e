"""url_filter on the shared UT1 and FineWeb URL-word lists."""

from __future__ import annotations

import gzip
import pickle

import pyarrow as pa
import pytest

from operators.ingest import iter_warc_records
from operators.resources_paths import data_dir
from operators.urlfilter import URLFilter

UT1 = data_dir() / "blocklists" / "ut1"


@pytest.fixture(scope="module")
def default_filter() -> URLFilter:
    return URLFilter()


def label(op: URLFilter, urls: list[str | None]) -> list[tuple[str | None, bool, str | None]]:
    out = op(pa.table({"url": pa.array(urls, pa.string()), "n": list(range(len(urls)))}))
    assert out.column("n").to_pylist() == list(range(len(urls)))  # rows kept, in order
    return list(zip(*(out.column(c).to_pylist() for c in ("domain", "url_blocked", "url_block_reason")), strict=True))


def first_entry(path) -> str:
    with gzip.open(path, "rt") as f:
        return f.readline().strip()


def test_fineweb_adult_list_is_loaded_whole(default_filter):
    label(default_filter, ["https://example.org/"])
    domains, _ = default_filter._lists["adult"]
    assert len(domains) == 4_558_940  # datatrove_fineweb/domains.gz, every entry


def test_adult_domain_and_subdomains(default_filter):
    result = label(
        default_filter,
        [
            "http://0-1sex.com/x",
            "https://A.b.0-1SEX.com:8080/",
            "http://not0-1sex.com/",
            "https://example.org/",
        ],
    )
    assert result[0] == ("0-1sex.com", True, "ut1:adult")
    assert result[1] == ("a.b.0-1sex.com", True, "ut1:adult")
    assert result[2][1] is False  # a suffix that is not a label boundary
    assert result[3] == ("example.org", False, None)


def test_category_order_and_selection():
    casino = first_entry(UT1 / "gambling" / "domains.gz")
    gambling_only = URLFilter(categories=["gambling"], url_words=False)
    assert label(gambling_only, [f"http://www.{casino}/", "http://0-1sex.com/"]) == [
        (f"www.{casino}", True, "ut1:gambling"),
        ("0-1sex.com", False, None),
    ]
    malware = first_entry(UT1 / "malware" / "domains.gz")
    assert label(URLFilter(categories=["malware", "phishing"], url_words=False), [f"http://{malware}/"])[0][2] == (
        "ut1:malware"
    )
    with pytest.raises(ValueError, match="no UT1 lists for category 'nope'"):
        URLFilter(categories=["nope"])


def test_ut1_urls_match_as_path_prefixes():
    op = URLFilter(categories=["adult"], url_words=False)
    listed = "101soundboards.com/boards/231587-bbw-bdsm-erotic-audio-clips"  # ut1/adult/urls
    result = label(op, [f"https://www.{listed}", f"http://{listed}/page?x=1", "http://101soundboards.com/boards/"])
    assert [r[2] for r in result] == ["ut1:adult", "ut1:adult", None]


def test_url_words(default_filter):
    result = label(
        default_filter,
        [
            "https://example.org/2g1c-video",  # banned word
            "https://example.org/anus-asshole",  # two soft-banned words
            "https://example.org/anus",  # one is not enough
            "https://example.org/babybatter",  # banned sub-word inside a word
            "https://example.org/poof",  # "#poof" is disabled in banned_words
            "https://example.org/mong",  # "#mong" too
        ],
    )
    assert [r[2] for r in result] == [
        "banned_word:2g1c",
        "soft_banned_words",
        None,
        "banned_subword:babybatter",
        None,
        None,
    ]
    no_words = URLFilter(categories=[], url_words=False)
    assert label(no_words, ["https://example.org/2g1c-video"])[0][1] is False


def test_allowlist_and_missing_urls():
    op = URLFilter(categories=["adult"], allow_domains=["www.0-1sex.com"])
    assert label(op, ["http://0-1sex.com/anus-asshole", "http://cdn.0-1sex.com/", None, "not a url"]) == [
        ("0-1sex.com", False, None),
        ("cdn.0-1sex.com", False, None),
        (None, False, None),
        ("not a url", False, None),
    ]


def test_pickle_drops_loaded_lists_and_reloads(default_filter):
    label(default_filter, ["http://0-1sex.com/"])
    copy = pickle.loads(pickle.dumps(default_filter))
    assert copy._lists is None
    assert label(copy, ["http://0-1sex.com/"])[0][1] is True


def test_real_crawl_urls(default_filter):
    # The wget samples are research home pages: none may be blocked (false positives cost good data).
    urls = [
        r["url"]
        for name in ("0000", "0001")
        for r in iter_warc_records(str(data_dir() / "warc" / f"wget-2024-en-dolma-sample-{name}.warc.gz"))
    ]
    assert len(urls) == 37
    assert not any(blocked for _, blocked, _ in label(default_filter, urls))
    assert URLFilter.resources.stateful
