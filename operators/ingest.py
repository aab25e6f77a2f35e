"""Readers: raw inputs (WARC/WET files, folders of HTML, JSON Lines) to rows with the columns of
``ROW_SCHEMA``.

These are generators, not batch operators: a pipeline wraps them (one file per task) and batches the rows.
A reader never raises on bad data: a record it cannot use becomes a row with ``reject_reason`` (a stable
snake_case reason) and a short ``reject_detail``, so that every input record is accounted for in
``web.rejects``. Only a missing file or an unsupported URL scheme raises, since that is a caller error, not
bad data.

Reasons: ``warc_truncated`` (gzip stream or record body cut short), ``warc_malformed`` (broken WARC or HTTP
headers, no WARC-Type, corrupt gzip), ``http_status`` (not 2xx), ``non_html_payload``, ``empty_payload`` (also a
zero-length record), ``payload_too_large`` (over the recipe's ``max_payload_bytes``, or inflating past it),
``decode_error`` (no charset decodes the bytes), ``html_too_deep`` (elements nested deeper than any extractor can
handle in bounded time), ``json_malformed`` (JSON Lines only).
"""

from __future__ import annotations

import base64
import codecs
import gzip
import hashlib
import io
import json
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import fsspec
import pyarrow as pa
from fastwarc.warc import ArchiveIterator, WarcRecord, WarcRecordType
from resiliparse.parse.encoding import detect_encoding, map_encoding_to_html5

from operators.htmldepth import MAX_HTML_DEPTH, nests_deeper_than

MAX_PAYLOAD_BYTES = 10 * 1024 * 1024
HTML_MIME = frozenset({"text/html", "application/xhtml+xml"})
# Servers often mislabel HTML with these (or send no type): such payloads are sniffed instead of rejected.
SNIFF_MIME = frozenset({"", "text/plain", "application/octet-stream", "unknown/unknown"})
HTML_SUFFIXES = (".html", ".htm", ".html.gz", ".htm.gz")
# Decoders that are strict supersets of the declared charset: GB2312/GBK pages routinely use GB18030-only
# characters, and decoding them as GBK would turn those into U+FFFD.
CHARSET_SUPERSETS = {"gb2312": "gb18030", "gbk": "gb18030"}
# Share of non-ASCII chars that may decode to U+FFFD under a declared charset (a page with a stray byte keeps
# it).
MAX_BAD_CHAR_RATIO = 0.01
# Bytes scanned for <meta charset>: WHATWG prescans 1024, but real pages put long <head> scripts first.
META_SCAN_BYTES = 8192
# Extra bytes allowed over max_payload_bytes for the HTTP headers that sit in the same WARC block.
HTTP_HEADER_SLACK = 64 * 1024

ROW_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("url", pa.string()),
        ("source_uri", pa.string()),
        ("source_offset", pa.int64()),
        ("fetch_time", pa.string()),
        ("http_status", pa.int32()),
        ("content_type", pa.string()),  # MIME type only, lower case; parameters go to `charset`
        ("charset", pa.string()),  # the codec actually used to decode `html`/`text`
        ("html", pa.string()),
        ("text", pa.string()),  # set only by inputs that are already text (WET conversion, JSONL text)
        ("payload_bytes", pa.int64()),
        ("reject_reason", pa.string()),
        ("reject_detail", pa.string()),
    ]
)

_META_CHARSET = re.compile(rb"""<meta[^>]{0,512}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_STATUS_LINE = re.compile(r"HTTP/\S+\s+(\d{3})")
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


class RejectError(Exception):
    """Internal: a record is unusable for ``reason``; the message is the detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Reader rows to an Arrow table with the reader schema."""
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def _new_row(source_uri: str, offset: int | None, **fields) -> dict:
    row = dict.fromkeys(ROW_SCHEMA.names)
    row.update(source_uri=source_uri, source_offset=offset, **fields)
    return row


def _sha1_digest(data: bytes) -> str:
    """Digest in the WARC header format (``sha1:BASE32``) so a computed one equals a recorded one."""
    return "sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode()


def _doc_id(row: dict, digest: str) -> str:
    """Stable id: the same URL with the same payload always gets the same id, whichever file it came from."""
    key = f"{row['url']}\n{digest}" if row["url"] else f"{row['source_uri']}@{row['source_offset']}\n{digest}"
    return hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()


def _reject(row: dict, reason: str, detail: str, digest: str | None = None) -> dict:
    row.update(reject_reason=reason, reject_detail=detail[:200], html=None, text=None)
    row["doc_id"] = row["doc_id"] or _doc_id(row, digest or reason)
    return row


# --- charset decoding -----------------------------------------------------------------------------------


def _codec(label: str | bytes | None) -> str | None:
    """A charset label to a Python codec name (WHATWG label mapping, then supersets), None if unknown."""
    if not label:
        return None
    if isinstance(label, bytes):
        label = label.decode("ascii", "ignore")
    name = map_encoding_to_html5(label.strip().strip("\"'"), fallback_utf8=False)
    if name is None:
        return None
    name = CHARSET_SUPERSETS.get(name.lower(), name.lower())
    try:
        codecs.lookup(name)
    except LookupError:
        return None
    return name


def _bad_ratio(text: str) -> float:
    """Share of non-ASCII characters that are U+FFFD: a wrong charset garbles nearly all of them, a right one
    with a stray byte only a few. (Relative to non-ASCII, since a Latin-1 page is mostly ASCII.)"""
    non_ascii = len(text) - len(text.encode("ascii", "ignore"))
    return text.count("\ufffd") / non_ascii if non_ascii else 0.0


def decode_html(body: bytes, header_charset: str | None = None) -> tuple[str, str]:
    """Decode HTML bytes; returns (text, codec).

    Order: BOM; HTTP charset, then ``<meta>`` charset (each accepted with up to ``MAX_BAD_CHAR_RATIO`` stray
    bytes, as browsers do); UTF-8 (same tolerance: valid UTF-8 is a strong signal that detectors sometimes
    miss); then the detected charset and windows-1252, strictly. Raises ``RejectError('decode_error')`` when
    none fits.
    """
    for bom, codec in _BOMS:
        if body.startswith(bom):
            return body.decode(codec, "replace"), codec
    meta = _META_CHARSET.search(body[:META_SCAN_BYTES])
    declared = [_codec(header_charset), _codec(meta.group(1) if meta else None), "utf-8"]
    tried: list[str] = []
    for codec, lenient in [(c, True) for c in declared] + [
        (_codec(detect_encoding(body)), False),
        ("cp1252", False),
    ]:
        if codec is None or codec in tried:
            continue
        tried.append(codec)
        try:
            return body.decode(codec), codec
        except UnicodeDecodeError:
            if lenient:
                text = body.decode(codec, "replace")
                if _bad_ratio(text) <= MAX_BAD_CHAR_RATIO:
                    return text, codec
    raise RejectError("decode_error", f"no charset decodes the payload (tried {', '.join(tried)})")


# --- HTTP payload ---------------------------------------------------------------------------------------


def _split_http(block: bytes) -> tuple[int, dict[str, str], bytes]:
    """Split an HTTP response block into (status, lower-cased headers, body). Tolerates bare-LF headers
    (ClueWeb09 writes them), which fastwarc's own HTTP parser does not."""
    ends = [(i, n) for i, n in ((block.find(b"\r\n\r\n"), 4), (block.find(b"\n\n"), 2)) if i >= 0]
    if not ends:
        raise RejectError("warc_malformed", "no end of HTTP headers")
    end, sep = min(ends)
    lines = block[:end].decode("latin-1").splitlines()
    status = _STATUS_LINE.match(lines[0].strip()) if lines else None
    if status is None:
        raise RejectError("warc_malformed", f"bad HTTP status line {lines[0][:60] if lines else ''!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers.setdefault(name.strip().lower(), value.strip())
    return int(status.group(1)), headers, block[end + sep :]


def _dechunk(body: bytes) -> bytes:
    """Undo ``Transfer-Encoding: chunked`` (wget stores the raw stream); a body that is not really chunked, or
    whose last chunks are missing, keeps what could be read."""
    out, pos = [], 0
    while pos < len(body):
        eol = body.find(b"\n", pos)
        try:
            size = int(body[pos:eol].split(b";")[0].strip(), 16) if eol >= 0 else -1
        except ValueError:
            size = -1
        if size < 0:
            return b"".join(out) if out else body
        if size == 0:
            break
        out.append(body[eol + 1 : eol + 1 + size])
        pos = eol + 1 + size
        pos += 2 if body[pos : pos + 2] == b"\r\n" else 1 if body[pos : pos + 1] == b"\n" else 0
    return b"".join(out)


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo a Content-Encoding, but only when the bytes are really compressed: crawlers such as
    ClueWeb09's Nutch stored the decoded body and kept the ``Content-Encoding: gzip`` header."""
    encoding = encoding.lower()
    looks_textual = body.lstrip()[:1] == b"<"
    if encoding in ("", "identity") or looks_textual:
        return body
    if body[:2] == b"\x1f\x8b":
        wbits = 31
    elif encoding == "deflate":
        wbits = 15 if body[:1] and body[0] & 0x0F == 8 else -15
    else:
        raise RejectError("decode_error", f"unsupported Content-Encoding {encoding!r}")
    try:
        out = zlib.decompressobj(wbits).decompress(body, limit + 1)
    except zlib.error as exc:
        raise RejectError("decode_error", f"Content-Encoding {encoding}: {exc}") from exc
    if len(out) > limit:
        raise RejectError("payload_too_large", f"decompressed payload over {limit} bytes")
    return out


def _mime_and_charset(content_type: str | None) -> tuple[str, str | None]:
    mime, _, params = (content_type or "").partition(";")
    charset = re.search(r"charset\s*=\s*[\"']?([^\"';\s]+)", params, re.I)
    return mime.strip().lower(), charset.group(1) if charset else None


def _looks_like_html(body: bytes) -> bool:
    head = body[:1024].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<?xml")) or b"<html" in head or b"<body" in head


def _fill_html(row: dict, body: bytes, mime: str, header_charset: str | None, max_bytes: int) -> dict:
    """Shared by every HTML source: size, emptiness, type and charset checks, then decoding."""
    row["payload_bytes"] = len(body)
    row["content_type"] = mime or None
    if len(body) > max_bytes:
        raise RejectError("payload_too_large", f"{len(body)} bytes > {max_bytes}")
    if not body.strip():
        raise RejectError("empty_payload", "payload is empty")
    if mime not in HTML_MIME:
        if mime not in SNIFF_MIME or not _looks_like_html(body):
            raise RejectError("non_html_payload", f"content type {mime or 'missing'!r}")
        row["content_type"] = "text/html"
    row["html"], row["charset"] = decode_html(body, header_charset)
    _check_nesting(row["html"])
    return row


def _check_nesting(html: str) -> None:
    """Extractors take time quadratic in the nesting depth: a pathologically deep page is refused up front."""
    if nests_deeper_than(html, MAX_HTML_DEPTH):
        raise RejectError("html_too_deep", f"elements nested more than {MAX_HTML_DEPTH} deep")


# --- WARC / WET -----------------------------------------------------------------------------------------


def _clean_url(uri: str | None) -> str | None:
    """wget writes ``WARC-Target-URI: <https://…>``; the angle brackets are not part of the URL."""
    if uri is None:
        return None
    uri = uri.strip()
    if uri.startswith("<") and uri.endswith(">"):
        uri = uri[1:-1].strip()
    return uri or None


def _warc_doc_row(record: WarcRecord, source_uri: str, max_bytes: int, offset: int) -> dict:
    headers = record.headers
    row = _new_row(
        source_uri,
        offset,
        url=_clean_url(headers.get("WARC-Target-URI")),
        fetch_time=headers.get("WARC-Date"),  # kept raw: ClueWeb09 has dates like 2008-10-294T05:21:46-0700
    )
    recorded_digest = headers.get("WARC-Payload-Digest")
    declared = headers.get("Content-Length", "").strip()
    if not declared.isdigit():
        return _reject(row, "warc_malformed", f"bad WARC Content-Length {declared[:40]!r}", recorded_digest)
    length = int(declared)
    if length > max_bytes + HTTP_HEADER_SLACK:
        row["payload_bytes"] = length
        return _reject(row, "payload_too_large", f"{length} bytes > {max_bytes}", recorded_digest)
    block = record.reader.read(length)
    digest = recorded_digest or _sha1_digest(block)
    if len(block) < length:
        row["payload_bytes"] = len(block)
        return _reject(row, "warc_truncated", f"record body has {len(block)} of {length} bytes", digest)
    try:
        if record.record_type == WarcRecordType.conversion:
            # WET: the payload is already UTF-8 text extracted by Common Crawl.
            row.update(content_type=_mime_and_charset(headers.get("Content-Type"))[0] or "text/plain")
            row.update(payload_bytes=len(block), charset="utf-8")
            if not block.strip():
                raise RejectError("empty_payload", "payload is empty")
            row["text"] = block.decode("utf-8", "replace")
        elif not block.strip():
            raise RejectError("empty_payload", "zero-length record")
        else:
            status, http, body = _split_http(block)
            row["http_status"] = status
            if "chunked" in http.get("transfer-encoding", "").lower():
                body = _dechunk(body)
            body = _decompress(body, http.get("content-encoding", ""), max_bytes)
            digest = recorded_digest or _sha1_digest(body)
            mime, charset = _mime_and_charset(http.get("content-type"))
            row["payload_bytes"], row["content_type"] = len(body), mime or None
            if not 200 <= status < 300:
                raise RejectError("http_status", f"HTTP {status}")
            _fill_html(row, body, mime, charset, max_bytes)
    except RejectError as exc:
        return _reject(row, exc.reason, str(exc), digest)
    row["doc_id"] = _doc_id(row, digest)
    return row


TRUNCATION_WORDS = ("end of", "truncat", "eof", "cut short")


def _break_row(source_uri: str, offset: int | None, exc: Exception | str) -> dict:
    message = str(exc) or type(exc).__name__
    truncated = isinstance(exc, EOFError) or any(w in message.lower() for w in TRUNCATION_WORDS)
    reason = "warc_truncated" if truncated else "warc_malformed"
    return _reject(_new_row(source_uri, offset), reason, f"unreadable bytes at offset {offset}: {message}")


# A record whose own framing is broken (a lying Content-Length, a body cut short): the bytes after it are not
# a record boundary, so reading must resynchronise at the next gzip member or WARC header.
FRAMING_REASONS = frozenset({"warc_malformed", "warc_truncated"})
GZIP_MAGIC = b"\x1f\x8b\x08"
READ_CHUNK = 1 << 20
_WARC_HEADER_START = re.compile(rb"(?:^|\n)(WARC/\d)")


class GzipMember(io.RawIOBase):
    """The decompressed bytes of one gzip member of ``raw``, inflated lazily (fastwarc reads it like a file).

    Common Crawl and wget write one member per WARC record, so a member frames its record: a record whose
    header lies about its length spoils only its own member, and the next member is the next record.
    """

    def __init__(self, raw: BinaryIO, offset: int, pending: bytes = b""):
        self.offset = offset  # raw offset of the member's first byte
        self.end: int | None = None  # raw offset just past the member, once inflated to its end
        self.leftover = b""  # raw bytes read past the member: the start of the next one
        self.error: str | None = None  # the member is corrupt or cut short
        self.cut_short = False
        self._raw, self._pending, self._pending_at = raw, pending, offset
        self._inflate = zlib.decompressobj(31)
        self._out, self._out_pos, self._out_at = b"", 0, 0  # _out_at: member position of _out[0]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:  # fastwarc asks for the position; it never needs to go back far
        return True

    def tell(self) -> int:
        return self._out_at + self._out_pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset + (self.tell() if whence == io.SEEK_CUR else 0)
        if whence == io.SEEK_END or target < self._out_at:
            raise io.UnsupportedOperation("a gzip member reads forward only")
        while target > self._out_at + len(self._out) and not self.finished:
            self._next_output()
        self._out_pos = min(target - self._out_at, len(self._out))
        return self.tell()

    def _next_output(self) -> None:
        self._out_at += len(self._out)
        self._out, self._out_pos = self._inflate_step(), 0

    @property
    def finished(self) -> bool:
        return self.end is not None or self.error is not None

    def readinto(self, buffer) -> int:
        while self._out_pos >= len(self._out) and not self.finished:
            self._next_output()
        n = min(len(buffer), len(self._out) - self._out_pos)
        buffer[:n] = self._out[self._out_pos : self._out_pos + n]
        self._out_pos += n
        return n

    def drain(self) -> None:
        """Inflate (and discard) the rest of the member, so that ``end`` and ``leftover`` are known."""
        while not self.finished:
            self._inflate_step()

    def _inflate_step(self) -> bytes:
        if not self._pending:
            self._pending = self._raw.read(READ_CHUNK)
            if not self._pending:
                self.error, self.cut_short = "gzip member cut short (end of file)", True
                return b""
        try:
            out = self._inflate.decompress(self._pending, READ_CHUNK)
        except zlib.error as exc:
            self.error = f"corrupt gzip member: {exc}"
            return b""
        if self._inflate.eof:
            rest = self._inflate.unused_data
            self.end = self._pending_at + len(self._pending) - len(rest)
            self.leftover, self._pending = rest, b""
        else:
            tail = self._inflate.unconsumed_tail
            self._pending_at += len(self._pending) - len(tail)
            self._pending = tail
        return out


def _is_gzip_warc_member(candidate: bytes) -> bool:
    """Does ``candidate`` (raw bytes from a gzip magic on) inflate to the start of a WARC record?"""
    try:
        return zlib.decompressobj(31).decompress(candidate, 5) == b"WARC/"
    except zlib.error:
        return False


def _scan(stream: BinaryIO, start: int, find) -> int | None:
    """Raw offset of the first match of ``find(window) -> index | -1`` at or after ``start`` (None: none)."""
    overlap = 64 * 1024
    stream.seek(start)
    window, window_at = b"", start
    while True:
        chunk = stream.read(READ_CHUNK)
        window += chunk
        index = find(window)
        if index >= 0:
            return window_at + index
        if not chunk:
            return None
        drop = max(0, len(window) - overlap)
        window, window_at = window[drop:], window_at + drop


def _next_gzip_member(stream: BinaryIO, start: int) -> int | None:
    """The first gzip member at or after ``start`` that holds a WARC record."""

    def find(window: bytes) -> int:
        at = window.find(GZIP_MAGIC)
        while at >= 0:
            if _is_gzip_warc_member(window[at : at + 4096]):
                return at
            at = window.find(GZIP_MAGIC, at + 1)
        return -1

    return _scan(stream, start, find)


def _next_warc_header(stream: BinaryIO, start: int) -> int | None:
    """The first line starting with ``WARC/<digit>`` at or after ``start`` (uncompressed files)."""

    def find(window: bytes) -> int:
        match = _WARC_HEADER_START.search(window)
        return match.start(1) if match else -1

    return _scan(stream, start, find)


@dataclass
class _Frame:
    """Rows of one stretch of records read with one fastwarc iterator; ``broken_at``: where framing broke."""

    records: int = 0
    broken_at: int | None = None
    raised: bool = False  # fastwarc gave up on bytes after the last record (already reported as one reject)


def _frame_rows(
    data: BinaryIO,
    base: int,
    source_uri: str,
    max_bytes: int,
    frame: _Frame,
    error: Callable[[], str | None],
    start: int | None = None,
    quiet: bool = False,
) -> Iterator[dict]:
    """Records of ``data`` (offsets relative to ``base``; ``start``: offset of its first byte) until it ends or
    its framing breaks.

    A record with a broken frame is one reject; bytes that fastwarc cannot parse after a good record are one
    more (they may hold records that cannot be counted individually). ``quiet``: the bytes at ``start`` are the
    ones an earlier frame gave up on and already reported, so failing on them again reports nothing.
    """
    last_offset, last_broken, read = base if start is None else start, False, 0
    frame.raised = False
    records = ArchiveIterator(data, parse_http=False, strict_mode=False)
    try:
        for record in records:
            frame.records += 1
            read += 1
            last_offset = base + record.stream_pos
            if record.record_type in (WarcRecordType.response, WarcRecordType.conversion):
                row = _warc_doc_row(record, source_uri, max_bytes, last_offset)
                yield row
                last_broken = row["reject_reason"] in FRAMING_REASONS
            elif record.record_type == WarcRecordType.no_type:
                # a broken header: it may well have been a response, so it is counted, never skipped
                record.reader.consume()
                row = _new_row(source_uri, last_offset, url=_clean_url(record.headers.get("WARC-Target-URI")))
                yield _reject(row, "warc_malformed", "record has no WARC-Type")
            else:  # not a document, but read it through: a short body means its frame is broken
                declared, read = record.content_length, record.reader.consume()
                if read < declared:
                    detail = f"{record.record_type} record has {read} of {declared} bytes"
                    yield _break_row(source_uri, last_offset, EOFError(detail))
                    last_broken = True
            if last_broken:
                frame.broken_at = last_offset
                return
    except Exception as exc:  # fastwarc raises OSError on headers it cannot parse: report, never raise
        frame.broken_at, frame.raised = last_offset, not last_broken
        if not last_broken and not (quiet and read == 0):
            yield _break_row(source_uri, last_offset, error() or exc)
        return
    if error() and not last_broken:  # the frame ended early (cut short or corrupt) after its last full record
        frame.broken_at = last_offset
        yield _break_row(source_uri, last_offset, error())


def _gzip_rows(stream: BinaryIO, source_uri: str, max_bytes: int, frame: _Frame) -> Iterator[dict]:
    """Member by member; a corrupt member is one reject and reading resumes at the next WARC member."""
    member: GzipMember | None = GzipMember(stream, 0)
    while member is not None:
        yield from _frame_rows(member, member.offset, source_uri, max_bytes, frame, lambda m=member: m.error)
        member.drain()
        if member.cut_short:
            return
        if member.error is not None:
            start = _next_gzip_member(stream, member.offset + 1)
            if start is not None:
                stream.seek(start)
            member = None if start is None else GzipMember(stream, start)
        else:
            following = member.leftover or stream.read(READ_CHUNK)
            member = GzipMember(stream, member.end, following) if following else None


def _plain_rows(stream: BinaryIO, source_uri: str, max_bytes: int, frame: _Frame) -> Iterator[dict]:
    """Uncompressed (or zstd/lz4, which fastwarc detects) WARC: after a broken record, resume at the next
    ``WARC/`` header line."""
    start, quiet = 0, False
    while True:
        stream.seek(start)
        frame.broken_at = None
        # fastwarc takes record positions from the stream's tell(): they are file offsets already
        yield from _frame_rows(stream, 0, source_uri, max_bytes, frame, lambda: None, start, quiet)
        if frame.broken_at is None:
            return
        # the next header after the break (never the same one again: a header fastwarc refuses would loop)
        resume = _next_warc_header(stream, max(frame.broken_at, start) + 1)
        if resume is None:
            return
        start, quiet = resume, frame.raised


def iter_warc_records(path_or_url: str, max_payload_bytes: int = MAX_PAYLOAD_BYTES) -> Iterator[dict]:
    """Stream a WARC or WET file (plain or gzip; local path, ``s3://``, ``https://`` via fsspec) record by
    record.
    Yields one row per HTTP ``response`` and per WET ``conversion`` record; request, metadata, resource and
    warcinfo records are not documents and are skipped. Only one record is in memory at a time. A record with a
    broken header or a corrupt gzip member becomes one reject and reading resumes at the next gzip member (or
    ``WARC/`` header line); a file that is cut short yields its readable records and then one reject.
    """
    frame, rows = _Frame(), 0
    with fsspec.open(path_or_url, "rb") as stream:
        gzipped = stream.read(len(GZIP_MAGIC)) == GZIP_MAGIC
        stream.seek(0)
        reader = _gzip_rows if gzipped else _plain_rows
        for row in reader(stream, path_or_url, max_payload_bytes, frame):
            rows += 1
            yield row
    if not frame.records and not rows:
        yield _break_row(path_or_url, 0, ValueError("no WARC record found"))


# --- folders of HTML, JSON Lines ------------------------------------------------------------------------


def _read_url_map(urls_file: str | Path) -> dict[str, str]:
    """``{file, url}`` JSON Lines (``html_path`` also accepted) or ``file<TAB>url`` lines, keyed by path and
    name."""
    mapping: dict[str, str] = {}
    with open(urls_file, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if line.startswith("{"):
                entry = json.loads(line)
                name, url = entry.get("file") or entry.get("html_path"), entry.get("url")
            else:
                name, _, url = line.partition("\t")
            if name and url:
                mapping[name] = url
                mapping.setdefault(Path(name).name, url)
    return mapping


def iter_html_dir(
    directory: str | Path, urls_file: str | Path | None = None, max_payload_bytes: int = MAX_PAYLOAD_BYTES
) -> Iterator[dict]:
    """One row per ``.html`` / ``.html.gz`` file under ``directory`` (sorted), URL from ``urls_file`` when
    given.     Files carry no HTTP headers, so the charset comes from ``<meta>`` or detection."""
    root = Path(directory)
    urls = _read_url_map(urls_file) if urls_file else {}
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(HTML_SUFFIXES))
    for path in paths:
        rel = path.relative_to(root).as_posix()
        row = _new_row(str(path), 0, url=urls.get(rel) or urls.get(path.name))
        try:
            if path.suffix == ".gz":
                with gzip.open(path, "rb") as f:
                    body = f.read(max_payload_bytes + 1)
            else:
                body = path.read_bytes()
        except (OSError, EOFError) as exc:
            yield _reject(row, "warc_truncated" if isinstance(exc, EOFError) else "decode_error", str(exc))
            continue
        digest = _sha1_digest(body)
        try:
            _fill_html(row, body, "text/html", None, max_payload_bytes)
        except RejectError as exc:
            yield _reject(row, exc.reason, str(exc), digest)
            continue
        row["doc_id"] = _doc_id(row, digest)
        yield row


def iter_jsonl(path: str, max_payload_bytes: int = MAX_PAYLOAD_BYTES) -> Iterator[dict]:
    """Rows from JSON Lines (``.gz`` etc. by suffix) with ``url`` and ``text`` or ``html`` fields."""
    with fsspec.open(path, "rb", compression="infer") as f:
        for line_no, line in enumerate(f):
            if not line.strip():
                continue
            row = _new_row(path, line_no)
            try:
                obj = json.loads(line)
            except ValueError as exc:
                yield _reject(row, "json_malformed", f"line {line_no + 1}: {exc}")
                continue
            if not isinstance(obj, dict):
                yield _reject(row, "json_malformed", f"line {line_no + 1}: not an object")
                continue
            row.update(url=obj.get("url"), fetch_time=obj.get("fetch_time"), charset="utf-8")
            html, text = obj.get("html"), obj.get("text")
            field = "html" if isinstance(html, str) and html.strip() else "text"
            value = html if field == "html" else text
            data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else b""
            row.update(content_type="text/html" if field == "html" else "text/plain", payload_bytes=len(data))
            digest = _sha1_digest(data)
            if not data.strip():
                yield _reject(row, "empty_payload", "no html or text", digest)
            elif len(data) > max_payload_bytes:
                yield _reject(row, "payload_too_large", f"{len(data)} bytes > {max_payload_bytes}", digest)
            elif field == "html" and nests_deeper_than(value, MAX_HTML_DEPTH):
                yield _reject(row, "html_too_deep", f"elements nested more than {MAX_HTML_DEPTH} deep", digest)
            else:
                row[field], row["doc_id"] = value, _doc_id(row, digest)
                yield row
