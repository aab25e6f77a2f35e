"""Web curation end to end on Ray Data: every record a document or a reject, Chinese done right, resumable."""

from __future__ import annotations

import gzip
import json
import uuid

import pytest
from malformed_warcs import build_corpus

from catalog.runs import unrecorded_snapshot
from conftest import run_lake
from lake.config import load_config
from pipelines.ingest import ingest, read_input

GBK_HOSTS = ("037426.cn", "0760.jxtdw.com", "041696.com", "0755krk.com", "077678u.info", "096355.com")


def _ingest(lake, kind, paths, table="web.documents", **kw):
    return ingest(load_config(), lake, kind, [str(p) for p in paths], table=table, **kw)


def test_shared_warcs_are_fully_accounted_for_and_chinese_lands_as_zh(lake, data_dir):
    files = sorted(data_dir.glob("warc/*.warc.gz"))
    report = _ingest(lake, "warc", files)
    assert report.records == 83 and report.documents + report.rejects == 83
    assert lake.count("web.documents") == report.documents
    assert lake.count("web.rejects") == report.rejects
    assert report.rejects_by_reason["warc_truncated"] == 1
    assert report.stages["ingest"].rows_in == 83
    stage_names = list(report.stages)
    assert stage_names[:3] == ["ingest", "url_filter", "extract_main_text"]

    docs = {r["url"]: r for r in lake.read("web.documents").to_pylist()}
    rejected = {r["url"]: r for r in lake.read("web.rejects").to_pylist()}
    zh = [r for r in docs.values() if r["lang"] == "zh"]
    assert len(zh) >= 9
    # GBK/GB2312 pages (charset only in the HTTP header or <meta>) decode to readable Chinese
    gbk = [r for u, r in docs.items() if any(host in u for host in GBK_HOSTS)]
    gbk_rejected = [r for u, r in rejected.items() if u and any(host in u for host in GBK_HOSTS)]
    assert len(gbk) + len(gbk_rejected) == 6 and len(gbk) >= 5
    # the one a listing page whose only block is its copyright line, which cleanup removes
    assert all(r["reason"] == "empty_extraction" for r in gbk_rejected)
    for row in gbk:
        assert row["charset"] == "gb18030" and "\ufffd" not in row["title"] + row["text"]
        assert sum("\u4e00" <= ch <= "\u9fff" for ch in row["title"]) >= 5, row["title"]
    # 037426.cn's main block is English SEO spam under a Chinese title: language ID is right to say en
    assert sum(r["lang"] == "zh" for r in gbk) >= 4
    row = next(iter(docs.values()))
    assert row["source_uri"].endswith(".warc.gz") and row["source_offset"] >= 0 and row["input_digest"]

    rejects = lake.read("web.rejects").to_pylist()
    assert {r["stage"] for r in rejects} <= {"ingest", "language_id", "url_filter", "line_cleanup"}
    assert all(r["reason"] and r["input_uri"] for r in rejects)

    again = _ingest(lake, "warc", files)
    assert (again.records, again.skipped_inputs) == (0, 5)
    assert lake.count("web.documents") == report.documents, "a second run adds no rows"
    runs = [r for r in lake.read("lake.runs").to_pylist() if r["command"] == "ingest"]
    assert len(runs) == 1 and json.loads(runs[0]["counts"])["records"] == 83


def _warc_record(url: str, http_block: bytes, warc_headers: str | None = None) -> bytes:
    headers = warc_headers or (
        "WARC/1.0\r\nWARC-Type: response\r\n"
        f"WARC-Target-URI: {url}\r\nWARC-Date: 2024-01-01T00:00:00Z\r\n"
        f"WARC-Record-ID: <urn:uuid:{uuid.uuid4()}>\r\nContent-Type: application/http; msgtype=response\r\n"
        f"Content-Length: {len(http_block)}\r\n"
    )
    return gzip.compress(headers.encode() + b"\r\n" + http_block + b"\r\n\r\n")


def _http(body: bytes, content_type: str = "text/html; charset=utf-8") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


GOOD_PAGE = (
    "<html><head><title>Good page</title></head><body><article>"
    + "<p>This is a real paragraph about rivers and the people who live near them, written in full "
    "sentences so that every quality rule has something to look at.</p>" * 12 + "</article></body></html>"
).encode()


def test_bad_records_become_rejects_and_the_run_goes_on(lake, tmp_path):
    big = b"<html><body>" + b"<p>word </p>" * (20 * 1024 * 1024 // 12) + b"</body></html>"
    records = [
        _warc_record("http://example.org/good", _http(GOOD_PAGE)),
        _warc_record("http://example.org/image.png", _http(b"\x89PNG\r\n\x1a\n" + b"\0" * 200, "image/png")),
        _warc_record("http://example.org/empty", _http(b"")),
        _warc_record("http://example.org/invalid", _http(b"\xff\xfe\xfa" * 3000, "text/html; charset=utf-8")),
        _warc_record("http://example.org/big", _http(big)),
        _warc_record("http://example.org/broken", b"", warc_headers="WARC/1.0\r\nthis is not a header\r\n"),
        _warc_record("http://example.org/good2", _http(GOOD_PAGE.replace(b"rivers", b"mountains"))),
    ]
    path = tmp_path / "bad.warc.gz"
    path.write_bytes(b"".join(records))
    truncated = tmp_path / "cut.warc.gz"
    whole = _warc_record("http://example.org/cut", _http(GOOD_PAGE))
    truncated.write_bytes(whole[: len(whole) // 2])

    report = _ingest(lake, "warc", [path, truncated])
    assert report.records == report.documents + report.rejects
    reasons = {r["url"]: r["reason"] for r in lake.read("web.rejects").to_pylist()}
    assert reasons["http://example.org/image.png"] == "non_html_payload"
    assert reasons["http://example.org/empty"] == "empty_payload"
    assert reasons["http://example.org/big"] == "payload_too_large"
    assert "http://example.org/invalid" in reasons
    assert any(r in ("warc_truncated", "warc_malformed") for r in reasons.values())
    docs = {r["url"] for r in lake.read("web.documents").to_pylist()}
    assert {"http://example.org/good", "http://example.org/good2"} <= docs, "the run goes on past bad records"


def test_resume_after_a_crash_between_commits_never_duplicates(lake, data_dir, monkeypatch):
    files = sorted(data_dir.glob("warc/wget-2024-en-dolma-sample-000*.warc.gz"))
    monkeypatch.setenv("LAKE_FAULT", "after_documents_commit")
    with pytest.raises(RuntimeError, match="injected fault"):
        _ingest(lake, "warc", files, commit_every=1)
    partial = lake.count("web.documents")
    assert partial > 0, "the first input's documents were committed before the crash"
    gap = unrecorded_snapshot(lake, "web.documents")
    assert gap and gap["snapshot_id"] == lake.resolve_snapshot("web.documents", None), "readers see the gap"
    listed = json.loads(run_lake("catalog", "tables", "--format", "json").stdout)
    assert "not in lake.runs" in next(t["note"] for t in listed if t["table"] == "web.documents")
    monkeypatch.delenv("LAKE_FAULT")
    report = _ingest(lake, "warc", files, commit_every=1)
    assert unrecorded_snapshot(lake, "web.documents") is None and unrecorded_snapshot(lake, "web.rejects") is None
    assert report.records == 22 + 15
    docs = lake.read("web.documents", columns=("input_digest", "record_key")).to_pylist()
    keys = [(d["input_digest"], d["record_key"]) for d in docs]
    assert len(keys) == len(set(keys)) == report.documents


def test_html_directory_with_url_map(lake, data_dir):
    report = _ingest(
        lake,
        "html",
        [data_dir / "web/cx-extractor/RawHtml"],
        urls_file=str(data_dir / "web/cx-extractor/index.jsonl"),
        table="web.cx",
    )
    assert report.records == 74 and report.documents + report.rejects == 74
    langs = report.languages
    assert langs.get("zh", 0) >= 70, langs
    docs = lake.read("web.cx").to_pylist()
    assert all(d["url"] and d["url"].startswith("http") for d in docs)
    assert all("\ufffd" not in d["text"] for d in docs)


def test_jsonl_text_rows_keep_their_text(lake, tmp_path, data_dir):
    path = tmp_path / "pages.jsonl"
    texts = [json.loads(line)["text"] for line in (data_dir / "text/c4_demo.jsonl").read_text().splitlines()[:20]]
    path.write_text(
        "".join(json.dumps({"url": f"https://c4.example/{i}", "text": t}) + "\n" for i, t in enumerate(texts))
        + "not json\n"
    )
    report = _ingest(lake, "jsonl", [path], table="web.c4")
    assert report.records == 21 and report.rejects_by_reason.get("json_malformed") == 1
    docs = lake.read("web.c4").to_pylist()
    assert docs and all(d["text"] in texts for d in docs)


def _rows_per_input(lake, table: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in lake.read(table, columns=("input_uri",)).to_pylist():
        name = row["input_uri"].rsplit("/", 1)[-1]
        counts[name] = counts.get(name, 0) + 1
    return counts


def test_malformed_warc_corpus_printed_counts_equal_runs_and_table_rows(lake, lake_env, tmp_path):
    expected = build_corpus(tmp_path / "corpus")
    files = [str(tmp_path / "corpus" / name) for name in sorted(expected)]
    result = run_lake("ingest", "warc", *files, "--format", "json", env=lake_env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "ActorDiedError" not in result.stderr, result.stderr[-3000:]
    printed = json.loads(result.stdout)
    assert printed["records"] == sum(expected.values()) == printed["documents"] + printed["rejects"]
    # the run reports what it rejected, by reason (the 50 MB pages, the 100k-deep page, the broken bytes...)
    reader_reasons = {"payload_too_large", "html_too_deep", "decode_error", "empty_payload", "http_status"}
    assert reader_reasons | {"warc_malformed", "warc_truncated"} <= set(printed["rejects_by_reason"])

    docs, rejects = _rows_per_input(lake, "web.documents"), _rows_per_input(lake, "web.rejects")
    for name, records in expected.items():
        assert docs.get(name, 0) + rejects.get(name, 0) == records, name
    assert (lake.count("web.documents"), lake.count("web.rejects")) == (printed["documents"], printed["rejects"])
    runs = [json.loads(r["counts"]) for r in lake.read("lake.runs").to_pylist() if r["command"] == "ingest"]
    in_runs = {k: sum(c[k] for c in runs) for k in ("records", "documents", "rejects")}
    assert in_runs == {k: printed[k] for k in ("records", "documents", "rejects")}


def test_two_rejects_at_one_offset_both_land(lake, tmp_path):
    # a 404 record followed by unparseable bytes in the same gzip member: two rejects at offset 0
    build_corpus(tmp_path)
    report = _ingest(lake, "warc", [tmp_path / "junk-after-a-reject.warc.gz"])
    assert lake.count("web.rejects") == report.rejects, "both rejects landed"
    assert (report.records, report.rejects) == (3, 2)
    rejected = lake.read("web.rejects").to_pylist()
    assert sorted(r["reason"] for r in rejected) == ["http_status", "warc_malformed"]
    assert len({r["record_key"] for r in rejected}) == 2
    (run,) = [json.loads(r["counts"]) for r in lake.read("lake.runs").to_pylist()]
    assert run["rejects"] == lake.count("web.rejects") == 2


def test_every_commit_group_records_its_run_row(lake, tmp_path):
    build_corpus(tmp_path)
    files = [tmp_path / "bad-length-abc.warc.gz", tmp_path / "corrupt-member.warc.gz"]
    report = _ingest(lake, "warc", files, commit_every=1)
    runs = [json.loads(r["counts"]) for r in lake.read("lake.runs").to_pylist()]
    assert len(runs) == 2, "one row per commit group, all under one run id"
    assert sum(r["records"] for r in runs) == report.records == 20


def test_read_tasks_apply_the_recipes_payload_limit(tmp_path):
    build_corpus(tmp_path)
    item = {"kind": "warc", "uri": str(tmp_path / "wrong-encodings.warc.gz"), "digest": "d", "urls_file": None}
    assert {r["reject_reason"] for r in read_input(item | {"max_payload_bytes": 500})} == {"payload_too_large"}
    assert "payload_too_large" not in {r["reject_reason"] for r in read_input(item | {"max_payload_bytes": 10**7})}
