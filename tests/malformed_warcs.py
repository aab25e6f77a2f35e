"""A corpus of small malformed WARC files, built in place, with the number of input records each one holds.

Every case is a file a crawler or a broken transfer really produces; the count is what "nothing lost" means for
it: after an ingest, documents + rejects of that input must equal it.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

PAGE_WORDS = "Rivers carry water from the hills to the sea, and towns grow where they can be crossed. "


def http(body: bytes, status: str = "200 OK", content_type: str = "text/html; charset=utf-8") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n\r\n".encode() + body


def warc_record(uri: str, block: bytes, record_type: str = "response", length: str | None = None) -> bytes:
    """One WARC/1.0 record; ``length`` overrides the (correct) Content-Length."""
    declared = len(block) if length is None else length
    head = (
        f"WARC/1.0\r\nWARC-Type: {record_type}\r\nWARC-Target-URI: {uri}\r\n"
        "WARC-Date: 2024-01-01T00:00:00Z\r\n"
        f"Content-Type: application/http; msgtype=response\r\nContent-Length: {declared}\r\n\r\n"
    )
    return head.encode() + block + b"\r\n\r\n"


def page(i: int) -> bytes:
    return f"<html><body><article><p>Page {i}. {PAGE_WORDS * 8}</p></article></body></html>".encode()


def records(count: int = 10, bad_index: int | None = None, bad_length: str | None = None) -> list[bytes]:
    return [
        warc_record(f"http://a.test/{i}", http(page(i)), length=bad_length if i == bad_index else None)
        for i in range(count)
    ]


def member_per_record(recs: list[bytes]) -> bytes:
    """One gzip member per record, as Common Crawl and wget write them."""
    return b"".join(gzip.compress(r) for r in recs)


def corrupt_member(recs: list[bytes], index: int) -> bytes:
    """Flip bytes inside the deflate data of member ``index`` (its header stays intact)."""
    members = [bytearray(gzip.compress(r)) for r in recs]
    middle = len(members[index]) // 2
    members[index][middle : middle + 8] = bytes(b ^ 0xFF for b in members[index][middle : middle + 8])
    return b"".join(bytes(m) for m in members)


def deep_html_page(depth: int) -> bytes:
    return b"<html><body>" + b"<div>" * depth + b"deep" + b"</div>" * depth + b"</body></html>"


def build_corpus(directory: Path) -> dict[str, int]:
    """Write the corpus into ``directory``; returns {file name: input records it holds}."""
    directory.mkdir(parents=True, exist_ok=True)
    cut = member_per_record(records())
    sixth = len(member_per_record(records()[:5]))
    junk_after_reject = gzip.compress(
        warc_record("http://a.test/gone", http(page(0), status="404 Not Found")) + b"not a WARC header\r\n\r\n"
    ) + gzip.compress(records(1)[0])
    deep_record = warc_record("http://a.test/deep", http(deep_html_page(100_000)))
    cases: dict[str, tuple[bytes, int]] = {
        "bad-length-abc.warc.gz": (member_per_record(records(bad_index=2, bad_length="abc")), 10),
        "bad-length-small.warc.gz": (member_per_record(records(bad_index=2, bad_length="10")), 10),
        "bad-length-large.warc.gz": (member_per_record(records(bad_index=2, bad_length="100000")), 10),
        "bad-length-plain.warc": (b"".join(records(bad_index=2, bad_length="abc")), 10),
        "corrupt-member.warc.gz": (corrupt_member(records(), 3), 10),
        "cut-in-sixth-record.warc.gz": (cut[: sixth + 60], 6),
        "junk-after-a-reject.warc.gz": (junk_after_reject, 3),  # the 404, the junk, the good record
        "deep-html.warc.gz": (member_per_record([deep_record, *records(1)]), 2),  # 100k nested <div>s + a page
        "random-bytes.warc.gz": (zlib.crc32(b"seed").to_bytes(4, "big") * 512, 1),
        "empty.warc.gz": (b"", 1),
    }
    for name, (data, _) in cases.items():
        (directory / name).write_bytes(data)
    return {name: count for name, (_, count) in cases.items()}
