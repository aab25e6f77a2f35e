"""Readers on the shared WARC/WET/HTML/JSONL data: exact record counts, charsets, and every reject reason."""

from __future__ import annotations

import gzip
import itertools
import json
import re
import time

import malformed_warcs
import pytest

from operators.ingest import (
    ROW_SCHEMA,
    RejectError,
    decode_html,
    iter_html_dir,
    iter_jsonl,
    iter_warc_records,
    rows_to_table,
)
from operators.resources_paths import data_dir

WARC = data_dir() / "warc"
RESPONSES = {
    "cc-2020-zh-resiliparse.warc.gz": 16,
    "clueweb09-ja-eucjp-resiliparse.warc.gz": 29,
    "clipped-truncated-resiliparse.warc.gz": 1,
    "wget-2024-en-dolma-sample-0000.warc.gz": 22,
    "wget-2024-en-dolma-sample-0001.warc.gz": 15,
}
GBK_HOSTS = {"037426.cn", "0760.jxtdw.com", "041696.com", "0755krk.com", "077678u.info", "096355.com"}
CJK = re.compile(r"[\u4e00-\u9fff]")
KANA = re.compile(r"[\u3040-\u30ff]")


def rows(name: str, **kwargs) -> list[dict]:
    return list(iter_warc_records(str(WARC / name), **kwargs))


def warc_record(uri: str, http: bytes, record_type: str = "response") -> bytes:
    """A minimal WARC/1.0 record around an HTTP message (inline input for reasons the real files lack)."""
    head = (
        f"WARC/1.0\r\nWARC-Type: {record_type}\r\nWARC-Target-URI: {uri}\r\n"
        "WARC-Date: 2024-01-01T00:00:00Z\r\n"
        f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(http)}\r\n\r\n"
    )
    return head.encode() + http + b"\r\n\r\n"


def http(body: bytes, status: str = "200 OK", content_type: str = "text/html", extra: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{extra}\r\n".encode() + body


@pytest.mark.parametrize("name,count", sorted(RESPONSES.items()))
def test_one_row_per_http_response(name, count):
    assert len(rows(name)) == count


def test_all_83_responses_accounted_for():
    all_rows = [r for name in RESPONSES for r in rows(name)]
    assert len(all_rows) == 83
    assert sum(r["reject_reason"] is None for r in all_rows) == 82  # only the clipped record is unusable
    table = rows_to_table(all_rows)
    assert table.schema == ROW_SCHEMA and table.num_rows == 83


def test_wet_conversion_row_is_text():
    (row,) = rows("cc-2024-22-whirlwind.warc.wet.gz")
    assert row["reject_reason"] is None
    assert row["url"] == "https://an.wikipedia.org/wiki/Escopete"
    assert row["content_type"] == "text/plain" and row["html"] is None
    assert row["text"].startswith("Escopete - Biquipedia")


def test_row_fields_and_stable_ids():
    first, second = (
        rows("wget-2024-en-dolma-sample-0000.warc.gz"),
        rows("wget-2024-en-dolma-sample-0000.warc.gz"),
    )
    assert [r["doc_id"] for r in first] == [r["doc_id"] for r in second]
    assert all(re.fullmatch(r"[0-9a-f]{40}", r["doc_id"]) for r in first)
    assert len({r["doc_id"] for r in first}) == len(first)
    assert first[0]["url"] == "https://www.semanticscholar.org/research/research-team"  # wget's <...> removed
    assert all(not r["url"].startswith("<") for r in first)
    assert first[0]["source_offset"] == 865 and first[0]["fetch_time"] == "2024-04-25T16:24:44Z"
    offsets = [r["source_offset"] for r in first]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    assert all(r["http_status"] == 200 and r["content_type"] == "text/html" for r in first)


def test_wget_chunked_bodies_are_dechunked():
    for r in rows("wget-2024-en-dolma-sample-0001.warc.gz"):
        # a chunk-size line ("1f4a\r\n") left in the body would precede the markup
        assert r["html"].lstrip()[:1] == "<", r["url"]


def test_gbk_pages_decode_to_chinese():
    by_host = {re.match(r"https?://([^/]+)", r["url"]).group(1): r for r in rows("cc-2020-zh-resiliparse.warc.gz")}
    for host in GBK_HOSTS:
        row = by_host[host]
        assert row["charset"] == "gb18030", host
        assert "\ufffd" not in row["html"], host
        assert len(CJK.findall(row["html"])) > 100, host
    assert "香港最快开奖现场直84期_主页" in by_host["041696.com"]["html"]
    assert "二肖输尽光_主页" in by_host["077678u.info"]["html"]
    assert by_host["01spb.ru"]["charset"] == "cp1251" and "О компании" in by_host["01spb.ru"]["html"]


def test_clueweb_eucjp_and_malformed_dates():
    result = rows("clueweb09-ja-eucjp-resiliparse.warc.gz")
    assert all(r["reject_reason"] is None for r in result)
    assert {r["fetch_time"] for r in result} == {"2008-10-294T05:21:46-0700"}  # kept raw
    for r in result:
        assert r["charset"] == "euc_jp" and "\ufffd" not in r["html"]
        assert len(KANA.findall(r["html"])) > 100
    assert "吉田かばん" in result[0]["html"]


def test_clipped_record_is_truncated_reject():
    (row,) = rows("clipped-truncated-resiliparse.warc.gz")
    assert row["reject_reason"] == "warc_truncated"
    assert row["url"].startswith("http://www.houstonpress.com/music/")
    assert row["html"] is None and row["doc_id"]


@pytest.mark.parametrize("cut,good", [(40_000, 3), (70_000, 7)])
def test_truncated_file_yields_prefix_then_break(tmp_path, cut, good):
    # 40 000 falls inside the 4th response's gzip member, 70 000 inside a request record after the 7th
    # response.
    path = tmp_path / "cut.warc.gz"
    path.write_bytes((WARC / "cc-2020-zh-resiliparse.warc.gz").read_bytes()[:cut])
    result = list(iter_warc_records(str(path)))
    assert [r["reject_reason"] for r in result] == [None] * good + ["warc_truncated"]


def test_corrupt_gzip_yields_prefix_then_break(tmp_path):
    data = bytearray((WARC / "cc-2020-zh-resiliparse.warc.gz").read_bytes())
    data[50_000:50_040] = bytes(b ^ 0xFF for b in data[50_000:50_040])
    path = tmp_path / "corrupt.warc.gz"
    path.write_bytes(bytes(data))
    result = list(iter_warc_records(str(path)))
    # the corrupt member is the 6th response: one reject, then reading resumes at the next intact member
    assert [r["reject_reason"] for r in result] == [None] * 5 + ["warc_malformed"] + [None] * 10


def test_broken_warc_header_never_raises_and_reading_resumes(tmp_path):
    raw = gzip.decompress((WARC / "wget-2024-en-dolma-sample-0000.warc.gz").read_bytes())
    second = raw.find(b"WARC-Type: response", raw.find(b"WARC-Type: response") + 1)
    start = raw.find(b"Content-Length:", second)
    path = tmp_path / "bad.warc"
    path.write_bytes(raw[:start] + b"Content-Length: abc" + raw[raw.find(b"\r\n", start) :])
    result = list(iter_warc_records(f"file://{path}"))  # also checks the fsspec URL form
    # uncompressed: the bad record is one reject, reading resumes at the next WARC/ header line
    assert [r["reject_reason"] for r in result] == [None, "warc_malformed"] + [None] * 20
    assert "Content-Length" in result[1]["reject_detail"]


@pytest.mark.parametrize("bad_length", ["abc", "10", "100000", "-5", ""])
def test_bad_content_length_is_one_reject_and_the_next_members_are_read(tmp_path, bad_length):
    path = tmp_path / "bad-length.warc.gz"
    path.write_bytes(malformed_warcs.member_per_record(malformed_warcs.records(bad_index=1, bad_length=bad_length)))
    result = list(iter_warc_records(str(path)))
    assert [r["url"] for r in result] == [f"http://a.test/{i}" for i in range(10)]
    assert [r["reject_reason"] is None for r in result] == [True, False] + [True] * 8
    assert result[1]["reject_reason"] in ("warc_malformed", "warc_truncated")
    assert len({r["source_offset"] for r in result}) == 10


def test_payload_too_large_keeps_count():
    result = rows("cc-2020-zh-resiliparse.warc.gz", max_payload_bytes=20_000)
    assert len(result) == 16
    large = [r for r in result if r["reject_reason"] == "payload_too_large"]
    assert 0 < len(large) < 16 and all(r["payload_bytes"] > 20_000 for r in large)


def test_reject_reasons_on_inline_records(tmp_path):
    html = b"<html><body><p>hello</p></body></html>"
    gz = gzip.compress(html)
    records = [
        warc_record("http://a.test/ok", http(html)),
        warc_record("http://a.test/req", b"GET / HTTP/1.1\r\n\r\n", record_type="request"),  # not a document
        warc_record("http://a.test/img", http(b"\x89PNG\r\n\x1a\n....", content_type="image/png")),
        warc_record("http://a.test/empty", http(b"")),
        warc_record("http://a.test/404", http(html, status="404 Not Found")),
        warc_record("http://a.test/gz", http(gz, extra="Content-Encoding: gzip\r\n")),
        warc_record("http://a.test/sniff", http(html, content_type="application/octet-stream")),
        warc_record("http://a.test/nohttp", b"garbage without headers"),
    ]
    path = tmp_path / "inline.warc"
    path.write_bytes(b"".join(records))
    result = {r["url"]: r for r in iter_warc_records(str(path))}
    assert len(result) == 7
    assert result["http://a.test/ok"]["html"] == html.decode()
    assert result["http://a.test/img"]["reject_reason"] == "non_html_payload"
    assert result["http://a.test/empty"]["reject_reason"] == "empty_payload"
    assert result["http://a.test/404"]["reject_reason"] == "http_status"
    assert result["http://a.test/gz"]["html"] == html.decode()
    assert result["http://a.test/sniff"]["content_type"] == "text/html"
    assert result["http://a.test/nohttp"]["reject_reason"] == "warc_malformed"


def test_decode_html_order_and_errors():
    gbk = "中文网页".encode("gbk")
    assert decode_html(b"<meta charset=gb2312>" + gbk) == ("<meta charset=gb2312>中文网页", "gb18030")
    # A wrong HTTP charset that does not decode is skipped in favour of the <meta> one.
    assert decode_html(b"<meta charset=gbk>" + gbk, "utf-8")[1] == "gb18030"
    with pytest.raises(RejectError) as exc:
        decode_html(bytes([0x81, 0x8D, 0x8F, 0x90, 0x9D]) * 50, "utf-8")
    assert exc.value.reason == "decode_error"


def test_html_dir_gbk_without_headers():
    root = data_dir() / "web" / "cx-extractor"
    result = list(iter_html_dir(root / "RawHtml", urls_file=root / "index.jsonl"))
    assert len(result) == 74
    index = {json.loads(line)["html_path"].split("/")[-1]: json.loads(line) for line in open(root / "index.jsonl")}
    for row in result:
        entry = index[row["source_uri"].split("/")[-1]]
        assert row["reject_reason"] is None and row["charset"] == "gb18030"
        assert "\ufffd" not in row["html"] and row["url"] == entry["url"]
        assert entry["title"] in row["html"]


def test_html_dir_gzipped_pages():
    root = data_dir() / "web" / "magic-html"
    result = list(iter_html_dir(root, urls_file=root / "index.jsonl"))
    assert len(result) == 261
    assert all(r["url"] and r["url"].startswith("http") for r in result)
    assert all(r["reject_reason"] is None for r in result)
    for row in result:
        # Two CNN pages are valid UTF-8 that the detector calls windows-1252: no mojibake U+FFFD may appear.
        raw = gzip.decompress(open(row["source_uri"], "rb").read())
        assert row["html"].count("\ufffd") == raw.count("\ufffd".encode()), row["url"]


def test_jsonl_reader(tmp_path):
    result = list(iter_jsonl(str(data_dir() / "text" / "cmrc2018_trial_zh_wiki_paragraphs.jsonl")))
    assert len(result) == 256 and all(r["reject_reason"] is None and r["text"] for r in result)
    path = tmp_path / "mixed.jsonl.gz"
    lines = [
        '{"url": "http://x.test/", "html": "<p>hi</p>"}',
        '{"url": "http://y.test/", "text": ""}',
        "{broken",
    ]
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    html_row, empty_row, broken_row = iter_jsonl(str(path))
    assert html_row["html"] == "<p>hi</p>" and html_row["content_type"] == "text/html"
    assert empty_row["reject_reason"] == "empty_payload"
    assert broken_row["reject_reason"] == "json_malformed"


def test_deeply_nested_page_is_a_reject_in_bounded_time(tmp_path):
    malformed_warcs.build_corpus(tmp_path)
    started = time.perf_counter()
    result = list(iter_warc_records(str(tmp_path / "deep-html.warc.gz")))
    assert time.perf_counter() - started < 5
    assert [r["reject_reason"] for r in result] == ["html_too_deep", None]
    assert result[0]["url"] == "http://a.test/deep" and "1000" in result[0]["reject_detail"]


def test_every_record_of_the_malformed_corpus_is_a_document_or_a_reject(tmp_path):
    expected = malformed_warcs.build_corpus(tmp_path)
    for name, count in expected.items():
        # a reader that loops on bad bytes would yield without end: take a few more than expected, never hang
        result = list(itertools.islice(iter_warc_records(str(tmp_path / name)), count + 5))
        assert len(result) == count, name
        for row in result:
            assert (row["html"] or row["text"]) if row["reject_reason"] is None else row["reject_detail"], (name, row)
        assert len({r["source_offset"] for r in result if r["reject_reason"] is None}) == sum(
            r["reject_reason"] is None for r in result
        ), name


def reasons(path) -> dict[str | None, str | None]:
    return {r["url"]: r["reject_reason"] for r in iter_warc_records(str(path))}


def test_broken_warc_headers_each_cost_one_record(tmp_path):
    malformed_warcs.build_corpus(tmp_path)
    for name in ("broken-warc-headers.warc.gz", "broken-warc-headers.warc"):
        result = list(iter_warc_records(str(tmp_path / name)))
        assert [r["url"] for r in result if r["reject_reason"] is None].count("http://a.test/broken") == 2, name
        assert {r["reject_reason"] for r in result} == {None, "warc_malformed"}, name
    details = " ".join(r["reject_detail"] or "" for r in iter_warc_records(str(tmp_path / "broken-warc-headers.warc")))
    assert "no WARC-Type" in details and "Content-Length" in details and "header" in details


def test_wrong_and_mixed_encodings(tmp_path):
    malformed_warcs.build_corpus(tmp_path)
    result = {r["url"].rsplit("/", 1)[1]: r for r in iter_warc_records(str(tmp_path / "wrong-encodings.warc.gz"))}
    for name in ("gbk-declared-utf8", "utf8-declared-gbk", "gbk-meta-utf8", "unknown-charset"):
        assert malformed_warcs.ZH_TEXT in result[name]["html"], name  # decoded to the very text, no mojibake
    assert result["gbk-declared-utf8"]["charset"] == "gb18030" and result["utf8-declared-gbk"]["charset"] == "utf-8"
    assert result["utf8-and-gbk-mixed"]["reject_reason"] == result["invalid-utf8-bytes"]["reject_reason"]
    assert result["invalid-utf8-bytes"]["reject_reason"] == "decode_error"


def test_oversized_zero_length_and_duplicate_id_records(tmp_path):
    malformed_warcs.build_corpus(tmp_path)
    started = time.perf_counter()
    oversized = list(iter_warc_records(str(tmp_path / "oversized-pages.warc.gz")))
    assert time.perf_counter() - started < 5, "50 MB pages are refused without being read"
    assert [r["reject_reason"] for r in oversized] == ["payload_too_large", "payload_too_large", None]
    assert oversized[0]["payload_bytes"] > 50 * 1024 * 1024 and oversized[0]["html"] is None
    assert reasons(tmp_path / "zero-length-records.warc.gz") == {
        "http://a.test/zero": "empty_payload",
        "http://a.test/empty-body": "empty_payload",
        "http://a.test/0": None,
    }
    duplicates = list(iter_warc_records(str(tmp_path / "duplicate-record-ids.warc.gz")))
    # a repeated WARC-Record-ID is not the reader's to judge: each record is a document, the exact copy shares its
    # doc_id (dedup removes it later) and the one with other content does not
    assert [r["reject_reason"] for r in duplicates] == [None] * 3
    assert duplicates[0]["doc_id"] == duplicates[1]["doc_id"] != duplicates[2]["doc_id"]
    assert len({r["source_offset"] for r in duplicates}) == 3


def test_max_payload_bytes_is_the_readers_limit(tmp_path):
    malformed_warcs.build_corpus(tmp_path)
    result = list(iter_warc_records(str(tmp_path / "wrong-encodings.warc.gz"), max_payload_bytes=500))
    assert {r["reject_reason"] for r in result} == {"payload_too_large"}
