"""Build benchmark WARC files from the real shared HTML pages.

Pool (728 pages, read in place from ``../shared/data``):
- ``web/magic-html`` (261, UTF-8, gold main text), ``web/cx-extractor`` (74, raw GBK, gold text),
  ``web/trafilatura-eval`` (311, snippets only: no gold text), and
- the 82 complete HTTP ``response`` records of ``warc/*.warc.gz`` (chunked / compressed bodies undone; the
  truncated record of ``clipped-truncated`` is left out), with their original HTTP status and Content-Type.

``build_warcs(out_dir, n)`` writes ``n`` response records, round-robin over ``files`` gzip WARC files (one gzip
member per record, as Common Crawl writes them). Pages are taken in a seeded shuffled order and cycled when ``n``
exceeds the pool; from the second cycle on, a page's URL gets a ``v=<cycle>`` query parameter, so every record has
a distinct URL (and so a distinct doc id) while the HTML is the same. HTTP headers say ``text/html`` with the
page's real charset (GBK for cx-extractor; the ``<meta>`` charset, or UTF-8 when the bytes are UTF-8, for the
benchmark sets); each record carries ``WARC-Identified-Payload-Type`` as Common Crawl's do.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import random
import re
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from fastwarc.warc import ArchiveIterator, WarcRecordType

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# The reader's own HTTP helpers: the pool gets the bodies our reader would see.
from operators.ingest import RejectError, _dechunk, _decompress, _split_http  # noqa: E402
from operators.text import data_dir  # noqa: E402

WEB_SETS = ("magic-html", "cx-extractor", "trafilatura-eval")
_META_CHARSET = re.compile(rb"""<meta[^>]{0,512}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)


@dataclass(frozen=True)
class Page:
    key: str  # "<set>/<id>" or "warc/<file>#<n>"
    source: str  # magic-html | cx-extractor | trafilatura-eval | warc
    url: str
    body: bytes
    content_type: str  # full HTTP Content-Type value
    status: int = 200
    gold: str | None = None  # gold main text (magic-html, cx-extractor)


@dataclass
class WarcSet:
    files: list[Path]
    records: int
    pool: dict[str, int]  # pages per source in the pool
    url_to_key: dict[str, str] = field(default_factory=dict)
    gold: dict[str, str] = field(default_factory=dict)  # page key -> gold text
    cycles: int = 1
    bytes_written: int = 0

    def describe(self) -> str:
        pool = ", ".join(f"{k} {v}" for k, v in self.pool.items())
        repeat = (
            f"pages repeat (each up to {self.cycles} times), every repeat with a varied URL (?v=k appended)"
            if self.cycles > 1
            else "no page repeats (n <= pool); URLs as in the sources"
        )
        return (
            f"{self.records} records in {len(self.files)} WARC files ({self.bytes_written / 1e6:.1f} MB gz) "
            f"from {sum(self.pool.values())} real pages ({pool}); {repeat}"
        )


def _charset_for(body: bytes) -> str | None:
    meta = _META_CHARSET.search(body[:8192])
    try:
        body.decode("utf-8")
        return "utf-8"  # magic-html stores re-encoded UTF-8 even where the <meta> still says gb2312
    except UnicodeDecodeError:
        return meta.group(1).decode("ascii").lower() if meta else None


def _web_pages(name: str) -> list[Page]:
    root = data_dir() / "web" / name
    pages = []
    with open(root / "index.jsonl", encoding="utf-8") as index:
        for line in index:
            row = json.loads(line)
            body = (root / row["html_path"]).read_bytes()
            if row["html_path"].endswith(".gz"):
                body = gzip.decompress(body)
            encoding = row.get("encoding")
            charset = encoding or _charset_for(body)
            gold = None
            if row.get("gold_text_path"):
                gold = (root / row["gold_text_path"]).read_bytes().decode(encoding or "utf-8", errors="replace")
            pages.append(
                Page(
                    key=f"{name}/{row['id']}",
                    source=name,
                    url=row.get("url") or f"http://bench.invalid/{name}/{row['id']}",
                    body=body,
                    content_type="text/html" + (f"; charset={charset}" if charset else ""),
                    gold=gold,
                )
            )
    return pages


def _warc_pages() -> list[Page]:
    pages = []
    for path in sorted((data_dir() / "warc").glob("*.warc.gz")):
        n = 0
        try:
            with open(path, "rb") as stream:
                for record in ArchiveIterator(stream, parse_http=False, strict_mode=False):
                    if record.record_type != WarcRecordType.response:
                        continue
                    length = int(record.headers.get("Content-Length", "0").strip() or 0)
                    block = record.reader.read(length)
                    if len(block) < length:
                        continue  # truncated on purpose (clipped-truncated): not a page
                    try:
                        status, http, body = _split_http(block)
                        if "chunked" in http.get("transfer-encoding", "").lower():
                            body = _dechunk(body)
                        body = _decompress(body, http.get("content-encoding", ""), 10 * 1024 * 1024)
                    except RejectError:
                        continue
                    url = (record.headers.get("WARC-Target-URI") or "").strip().strip("<>").strip()
                    pages.append(
                        Page(
                            key=f"warc/{path.name}#{n}",
                            source="warc",
                            url=url or f"http://bench.invalid/warc/{path.name}/{n}",
                            body=body,
                            content_type=http.get("content-type") or "text/html",
                            status=status,
                        )
                    )
                    n += 1
        except OSError:  # the clipped file's gzip stream ends early
            continue
    return pages


def load_pool() -> list[Page]:
    """Every page of the pool, in a fixed order."""
    pages: list[Page] = []
    for name in WEB_SETS:
        pages += _web_pages(name)
    return pages + _warc_pages()


def _vary(url: str, cycle: int, taken: set[str]) -> str:
    candidate, k = url, 0
    while candidate in taken or (cycle > 0 and candidate == url):
        tag = f"{cycle}" if k == 0 else f"{cycle}.{k}"
        candidate = f"{url}{'&' if '?' in url else '?'}v={tag}"
        k += 1
    taken.add(candidate)
    return candidate


def _digest(data: bytes) -> str:
    return "sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode()


def _http_block(page: Page) -> tuple[bytes, bytes]:
    reason = {200: "OK"}.get(page.status, "Status")
    head = (
        f"HTTP/1.1 {page.status} {reason}\r\n"
        f"Content-Type: {page.content_type}\r\n"
        f"Content-Length: {len(page.body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    return head + page.body, page.body


def _warc_record(page: Page, url: str, date: str) -> bytes:
    block, payload = _http_block(page)
    mime = page.content_type.split(";")[0].strip().lower() or "text/html"
    headers = [
        "WARC/1.0",
        "WARC-Type: response",
        f"WARC-Date: {date}",
        f"WARC-Record-ID: <urn:uuid:{uuid.uuid4()}>",
        f"WARC-Target-URI: {url}",
        f"WARC-Payload-Digest: {_digest(payload)}",
        f"WARC-Block-Digest: {_digest(block)}",
        f"WARC-Identified-Payload-Type: {mime}",
        "Content-Type: application/http; msgtype=response",
        f"Content-Length: {len(block)}",
    ]
    raw = ("\r\n".join(headers) + "\r\n\r\n").encode("utf-8") + block + b"\r\n\r\n"
    return gzip.compress(raw, compresslevel=6)


def _warcinfo(name: str) -> bytes:
    info = b"software: llm-lake tests/benchmarks/warcgen.py\r\nformat: WARC File Format 1.0\r\n"
    headers = [
        "WARC/1.0",
        "WARC-Type: warcinfo",
        f"WARC-Date: {datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}",
        f"WARC-Filename: {name}",
        f"WARC-Record-ID: <urn:uuid:{uuid.uuid4()}>",
        "Content-Type: application/warc-fields",
        f"Content-Length: {len(info)}",
    ]
    return gzip.compress(("\r\n".join(headers) + "\r\n\r\n").encode() + info + b"\r\n\r\n")


def build_warcs(out_dir: Path, n: int, files: int = 4, seed: int = 0, pool: list[Page] | None = None) -> WarcSet:
    """Write ``n`` response records round-robin into ``files`` files ``bench-000NN.warc.gz`` under ``out_dir``."""
    if n < 1:
        raise ValueError("n must be at least 1")
    pool = list(pool if pool is not None else load_pool())
    random.Random(seed).shuffle(pool)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = max(1, min(files, n))
    paths = [out_dir / f"bench-{i:05d}.warc.gz" for i in range(files)]
    streams = [open(p, "wb") for p in paths]
    result = WarcSet(files=paths, records=n, pool={})
    for source in (*WEB_SETS, "warc"):
        result.pool[source] = sum(page.source == source for page in pool)
    taken: set[str] = set()
    date = "2026-11-24T00:00:00Z"
    try:
        for stream, path in zip(streams, paths, strict=True):
            stream.write(_warcinfo(path.name))
        for i in range(n):
            cycle, page = divmod(i, len(pool))[0], pool[i % len(pool)]
            url = _vary(page.url, cycle, taken)
            result.url_to_key[url] = page.key
            if page.gold is not None:
                result.gold[page.key] = page.gold
            streams[i % files].write(_warc_record(page, url, date))
        result.cycles = (n + len(pool) - 1) // len(pool)
    finally:
        for stream in streams:
            stream.close()
    result.bytes_written = sum(p.stat().st_size for p in paths)
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--pages", type=int, default=600)
    parser.add_argument("--files", type=int, default=4)
    args = parser.parse_args()
    print(build_warcs(args.out_dir, args.pages, args.files).describe())
