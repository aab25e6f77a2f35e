"""Reading input files record by record: local paths or fsspec URLs, compressed or not.

A record is ``(record_key, value)`` where value is a dict (JSON object, CSV row, Parquet row), a str (a line of
text) or a ``Reject`` for a record that did not parse. A file that cannot be read at all yields one ``Reject``
keyed ``"*"``: it is accounted for, never silently skipped.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import fsspec

from core.errors import UsageError

COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}
RAW_SNIPPET_CHARS = 2000


@dataclass(frozen=True)
class Reject:
    reason: str
    detail: str = ""
    raw: str = ""


Record = tuple[str, "dict | str | Reject"]


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def check_inputs(paths: list[str]) -> list[str]:
    """Fail fast, before anything is written, on inputs that do not exist."""
    if not paths:
        raise UsageError("no input files given")
    missing = [p for p in paths if not is_remote(p) and not Path(p).is_file()]
    folders = [p for p in missing if Path(p).is_dir()]
    if folders:  # no implicit walk: which files of a folder are inputs is the user's choice (a shell glob)
        raise UsageError(f"{folders[0]} is a directory; name the files in it, e.g. {folders[0].rstrip('/')}/*.gz")
    if missing:
        raise UsageError(
            f"no such file: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    return [p if is_remote(p) else str(Path(p).resolve()) for p in paths]


def file_digest(path: str) -> str:
    """sha256 of the stored bytes: the identity of an input for idempotent imports."""
    digest = hashlib.sha256()
    with fsspec.open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def format_of(path: str) -> tuple[str, str | None]:
    """(format, compression) from the file name: ``x.jsonl.gz`` -> ("jsonl", "gzip")."""
    suffixes = [s.lower() for s in PurePosixPath(path).suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    fmt = suffixes[-1].lstrip(".") if suffixes else ""
    return fmt, compression


def iter_records(path: str) -> Iterator[Record]:
    fmt, compression = format_of(path)
    readers = {
        "json": _iter_json,
        "jsonl": _iter_jsonl,
        "csv": _iter_csv,
        "txt": _iter_text,
        "text": _iter_text,
        "parquet": _iter_parquet,
    }
    reader = readers.get(fmt)
    if reader is None:
        yield "*", Reject("unsupported_format", f"cannot read {fmt or 'extension-less'} files")
        return
    try:
        for key, value in reader(path, compression):
            yield key, _check_utf8(value)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        # a broken stream mid-file: what came before is kept, the break itself is a reject
        yield "*", Reject("unreadable_file", f"{type(exc).__name__}: {exc}"[:500])


def _open_text(path: str, compression: str | None):
    # bytes that are not UTF-8 are kept as surrogates, so that they cost only the record holding them
    # (``_check_utf8``), not the rest of the file; a UTF-8 BOM is not part of the first record
    return fsspec.open(path, "rt", compression=compression, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _check_utf8(value: dict | str | Reject) -> dict | str | Reject:
    """A record holding bytes that are not UTF-8 (a GBK or Latin-1 line in a UTF-8 file) is a reject; a reject's
    raw snippet shows such bytes as ``\\xNN`` escapes (the rejects table stores UTF-8)."""
    if isinstance(value, Reject):
        return dataclasses.replace(value, raw=_escaped(value.raw))
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        detail = f"bytes that are not UTF-8 at character {exc.start}"
        return Reject("invalid_utf8", detail, _escaped(text)[:RAW_SNIPPET_CHARS])
    return value


def _escaped(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _iter_jsonl(path: str, compression: str | None) -> Iterator[Record]:
    with _open_text(path, compression) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            yield str(lineno), _parse_json_line(line)


def _parse_json_line(line: str) -> dict | Reject:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        return Reject("invalid_json", str(exc), line[:RAW_SNIPPET_CHARS])
    if not isinstance(value, dict):
        return Reject("not_an_object", f"got {type(value).__name__}", line[:RAW_SNIPPET_CHARS])
    return value


def _iter_json(path: str, compression: str | None) -> Iterator[Record]:
    """A JSON array of objects; files named .json that are really JSON Lines (BELLE's) are read as such."""
    with _open_text(path, compression) as fh:
        text = fh.read()
    stripped = text.lstrip()
    if not stripped.startswith("["):
        for lineno, line in enumerate(io.StringIO(text), start=1):
            if line.strip():
                yield str(lineno), _parse_json_line(line)
        return
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        yield "*", Reject("invalid_json", str(exc), text[:RAW_SNIPPET_CHARS])
        return
    for index, value in enumerate(values):
        if isinstance(value, dict):
            yield str(index), value
        else:
            yield str(index), Reject("not_an_object", f"got {type(value).__name__}", json.dumps(value)[:200])


def _iter_csv(path: str, compression: str | None) -> Iterator[Record]:
    with _open_text(path, compression) as fh:
        reader = csv.DictReader(fh)
        for index, row in enumerate(reader):
            if None in row:  # more cells than header columns
                yield (
                    str(index),
                    Reject("csv_extra_cells", f"{len(row[None])} extra cell(s)", json.dumps(row[None])[:200]),
                )
            else:
                yield str(index), dict(row)


def _iter_text(path: str, compression: str | None) -> Iterator[Record]:
    """One record per non-blank line (one document or sentence per line)."""
    with _open_text(path, compression) as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield str(lineno), line


def _iter_parquet(path: str, compression: str | None) -> Iterator[Record]:
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb") as fh:
        index = 0
        for batch in pq.ParquetFile(fh).iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                yield str(index), row
                index += 1
