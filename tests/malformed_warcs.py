"""A corpus of small malformed WARC files, built in place, with the number of input records each one holds.

Every case is a file a crawler or a broken transfer really produces; the count is what "nothing lost" means for
it: after an ingest, documents + rejects of that input must equal it.
"""

from __future__ import annotations

import functools
import gzip
import random
from pathlib import Path

PAGE_WORDS = "Rivers carry water from the hills to the sea, and towns grow where they can be crossed. "


def http(body: bytes, status: str = "200 OK", content_type: str = "text/html; charset=utf-8") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n\r\n".encode() + body


def warc_record(
    uri: str, block: bytes, record_type: str = "response", length: str | None = None, record_id: str | None = None
) -> bytes:
    """One WARC/1.0 record; ``length`` overrides the (correct) Content-Length."""
    declared = len(block) if length is None else length
    head = (
        f"WARC/1.0\r\nWARC-Type: {record_type}\r\nWARC-Target-URI: {uri}\r\n"
        "WARC-Date: 2024-01-01T00:00:00Z\r\n"
        + (f"WARC-Record-ID: <urn:uuid:{record_id}>\r\n" if record_id else "")
        + f"Content-Type: application/http; msgtype=response\r\nContent-Length: {declared}\r\n\r\n"
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


def broken_header_records() -> dict[str, bytes]:
    """Records whose WARC header is broken in one way each (the body is a good page)."""
    block = http(page(9))
    lines = [
        "WARC/1.0",
        "WARC-Type: response",
        "WARC-Target-URI: http://a.test/broken",
        "WARC-Date: 2024-01-01T00:00:00Z",
        "Content-Type: application/http; msgtype=response",
        f"Content-Length: {len(block)}",
    ]

    def record(head: list[str], extra: bytes = b"", end: bytes = b"\r\n") -> bytes:
        return "".join(line + "\r\n" for line in head).encode() + extra + end + block + b"\r\n\r\n"

    return {
        "unknown-version": record(["WARC/9.9", *lines[1:]]),
        "http-status-line": record(["HTTP/1.1 200 OK", *lines[1:]]),
        "no-content-length": record(lines[:-1]),
        "no-warc-type": record([lines[0], *lines[2:]]),
        "header-too-long": record(lines, b"X-Big: " + b"a" * 200_000 + b"\r\n"),
        "line-without-colon": record(lines, b"this line has no colon\r\n"),  # tolerated: a document
        "binary-header-value": record(lines, b"WARC-Junk: \xff\xfe\x00\x80\r\n"),  # tolerated: a document
    }


ZH_TEXT = "河流把水从山上带到海里，城镇在可以渡河的地方发展起来。" * 12


def html_page(text: str, head: str = "") -> str:
    return f"<html><head>{head}<title>t</title></head><body><article><p>{text}</p></article></body></html>"


def encoding_records() -> dict[str, bytes]:
    """Pages whose declared charset is wrong, missing or mixed; the name says whether they decode."""
    gbk, utf8 = html_page(ZH_TEXT).encode("gbk"), html_page(ZH_TEXT).encode("utf-8")
    english = html_page(PAGE_WORDS * 6).encode()
    pages = {
        "gbk-declared-utf8": http(gbk, content_type="text/html; charset=utf-8"),
        "utf8-declared-gbk": http(utf8, content_type="text/html; charset=gbk"),
        "gbk-meta-utf8": http(html_page(ZH_TEXT, '<meta charset="utf-8">').encode("gbk"), content_type="text/html"),
        "unknown-charset": http(utf8, content_type="text/html; charset=x-no-such-charset"),
        "utf8-and-gbk-mixed": http(utf8[: len(utf8) // 2] + gbk[len(gbk) // 2 :]),
        "invalid-utf8-bytes": http(english[:200] + bytes(range(0x80, 0x100)) * 2 + english[200:]),
    }
    return {name: warc_record(f"http://a.test/{name}", block) for name, block in pages.items()}


@functools.cache
def oversized_records(size: int = 50 * 1024 * 1024) -> tuple[bytes, bytes]:
    """A ``size``-byte page, and a small gzip body that inflates to ``size`` bytes (a compression bomb)."""
    body = b"<html><body><p>" + PAGE_WORDS.encode() * (size // len(PAGE_WORDS)) + b"</p></body></html>"
    bomb = http(gzip.compress(body, compresslevel=1)).replace(b"\r\n\r\n", b"\r\nContent-Encoding: gzip\r\n\r\n", 1)
    return warc_record("http://a.test/huge", http(body)), warc_record("http://a.test/bomb", bomb)


def zero_length_records() -> list[bytes]:
    """An empty WARC block, an HTTP response with an empty body, and an empty gzip member (no record at all)."""
    return [warc_record("http://a.test/zero", b""), warc_record("http://a.test/empty-body", http(b""))]


def build_corpus(directory: Path) -> dict[str, int]:
    """Write the corpus into ``directory``; returns {file name: input records it holds}."""
    directory.mkdir(parents=True, exist_ok=True)
    cut = member_per_record(records())
    sixth = len(member_per_record(records()[:5]))
    junk_after_reject = gzip.compress(
        warc_record("http://a.test/gone", http(page(0), status="404 Not Found")) + b"not a WARC header\r\n\r\n"
    ) + gzip.compress(records(1)[0])
    deep_record = warc_record("http://a.test/deep", http(deep_html_page(100_000)))
    noise = random.Random(20).randbytes(2048)
    good = gzip.compress(records(1)[0])
    broken = broken_header_records()
    # uncompressed, a header line without its colon or with binary bytes is read the same; the rest are rejects
    # uncompressed, a record with no ``WARC/`` line cannot be told from junk: it is part of the unreadable stretch
    # the record before it starts (one reject), so the plain file leaves it out to keep one count per record
    broken_plain = [record for name, record in broken.items() if name != "http-status-line"]
    record_id = "0b7e1a52-6c7c-4a55-9a44-1f2d1e2b3c4d"
    same_id = warc_record("http://a.test/dup", http(page(1)), record_id=record_id)
    other_with_same_id = warc_record("http://a.test/dup-other", http(page(2)), record_id=record_id)
    cases: dict[str, tuple[bytes, int]] = {
        "bad-length-abc.warc.gz": (member_per_record(records(bad_index=2, bad_length="abc")), 10),
        "bad-length-small.warc.gz": (member_per_record(records(bad_index=2, bad_length="10")), 10),
        "bad-length-large.warc.gz": (member_per_record(records(bad_index=2, bad_length="100000")), 10),
        "bad-length-plain.warc": (b"".join(records(bad_index=2, bad_length="abc")), 10),
        "corrupt-member.warc.gz": (corrupt_member(records(), 3), 10),
        "cut-in-sixth-record.warc.gz": (cut[: sixth + 60], 6),
        "junk-after-a-reject.warc.gz": (junk_after_reject, 3),  # the 404, the junk, the good record
        "deep-html.warc.gz": (member_per_record([deep_record, *records(1)]), 2),  # 100k nested <div>s + a page
        "random-bytes.warc.gz": (noise, 1),
        "random-bytes-after-gzip-magic.warc.gz": (b"\x1f\x8b\x08" + noise, 1),
        "random-bytes-between-members.warc.gz": (good + noise + good, 3),
        "empty.warc.gz": (b"", 1),
        "broken-warc-headers.warc.gz": (member_per_record([*records(1), *broken.values(), *records(1)]), 9),
        "broken-warc-headers.warc": (b"".join([*records(1), *broken_plain, *records(1)]), 8),
        "wrong-encodings.warc.gz": (member_per_record(list(encoding_records().values())), 6),
        "oversized-pages.warc.gz": (b"".join(gzip.compress(r, compresslevel=1) for r in oversized_records()) + good, 3),
        "zero-length-records.warc.gz": (member_per_record(zero_length_records()) + gzip.compress(b"") + good, 3),
        "duplicate-record-ids.warc.gz": (member_per_record([same_id, same_id, other_with_same_id]), 3),
    }
    for name, (data, _) in cases.items():
        (directory / name).write_bytes(data)
    return {name: count for name, (_, count) in cases.items()}
