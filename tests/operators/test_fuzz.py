"""Property-based tests: every operator, the reader and the recipe on arbitrary Unicode text and arbitrary bytes.

What must hold whatever the input: nothing raises, an operator returns one row per input row with each declared
column in its declared type, and the recipe ends every row as a document or a reject with a stage and a reason.
Examples are small and derandomized (no example database), so a run is deterministic and a failure reproduces.
"""

from __future__ import annotations

import functools
import gzip
import os
import tempfile
from pathlib import Path

import malformed_warcs
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.base import REGISTRY, build_operator
from operators.htmldepth import nests_deeper_than
from operators.ingest import ROW_SCHEMA, RejectError, decode_html, iter_warc_records, rows_to_table
from operators.recipe import _import_operator_modules, load_recipe
from pipelines.ingest import run_recipe

# LAKE_FUZZ_EXAMPLES raises the count for a longer local hunt; CI keeps the small default
EXAMPLES = int(os.environ.get("LAKE_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)

_import_operator_modules()
OPERATORS = sorted(REGISTRY)

# text the operators see in the wild, small: any Unicode (no lone surrogates: Arrow strings are UTF-8), or pieces
# of pages (CJK, punctuation, markup, URLs, e-mail addresses, long runs, blank lines)
PIECES = st.sampled_from(
    ["\n", "\n\n", " ", "。", "，", "河流", "the ", "Cookie policy", "<div>", "</p>", "http://x.test/a?b=1",
     "a@b.test", "13800138000", "•", "...", "©", "\t", "\u200b", "\ufffd", "x" * 300, "\x00"]
)  # fmt: skip
TEXT = st.one_of(st.text(max_size=200), st.lists(st.one_of(PIECES, st.text(max_size=20)), max_size=30).map("".join))
NULLABLE_TEXT = st.one_of(st.none(), TEXT)
URL = st.one_of(
    st.none(),
    st.text(max_size=60),
    st.builds(
        "{}://{}/{}".format,
        st.sampled_from(["http", "https", "ftp", ""]),
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=30),
        st.text(max_size=30),
    ),
)
HTML_TAGS = st.sampled_from(
    ["<html>", "<body>", "<div>", "</div>", "<p>", "</p>", "<script>", "</script>", "<a href=x>", "<!--", "-->",
     "<title>", "</title>", "<br/>", "<table><tr><td>", "<meta charset=gbk>"]
)  # fmt: skip
HTML = st.lists(st.one_of(HTML_TAGS, TEXT), max_size=25).map("".join)


@functools.cache
def operator(name: str):
    return build_operator(name)


def batch_of(texts: list[str | None], urls: list[str | None], htmls: list[str | None]) -> pa.Table:
    n = len(texts)
    return pa.table(
        {
            "doc_id": pa.array([f"d{i}" for i in range(n)], pa.string()),
            "url": pa.array(urls[:n] + [None] * (n - len(urls[:n])), pa.string()),
            "text": pa.array(texts, pa.string()),
            "html": pa.array(htmls[:n] + [None] * (n - len(htmls[:n])), pa.string()),
        }
    )


def check_contract(name: str, batch: pa.Table) -> None:
    op = operator(name)
    out = op(batch)  # the base class raises ContractError on a dropped/added row or a missing/ill-typed column
    assert out.num_rows == batch.num_rows
    for column, declared in op.output_columns.items():
        assert out.schema.field(column).type == declared, (name, column)
    assert set(batch.column_names) <= set(out.column_names)


@pytest.mark.parametrize("name", OPERATORS)
@FUZZ
@given(
    texts=st.lists(NULLABLE_TEXT, min_size=1, max_size=6),
    urls=st.lists(URL, max_size=6),
    htmls=st.lists(HTML, max_size=6),
)
def test_every_operator_on_arbitrary_text(name, texts, urls, htmls):
    check_contract(name, batch_of(texts, urls, htmls))


@FUZZ
@given(body=st.binary(max_size=600), charset=st.one_of(st.none(), st.sampled_from(["utf-8", "gbk", "latin-1", "x"])))
def test_html_bytes_decode_or_reject_then_extract(body, charset):
    """Arbitrary bytes as a page: decoding gives text or a decode_error reject, and extraction takes the text."""
    try:
        html, codec = decode_html(body, charset)
    except RejectError as exc:
        assert exc.reason == "decode_error"
        return
    assert codec and isinstance(html, str)
    nests_deeper_than(html)
    check_contract("extract_main_text", batch_of([None], [None], [html]))


def _reader_rows(data: bytes, suffix: str) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="lake-fuzz-") as tmp:
        path = Path(tmp) / f"input{suffix}"
        path.write_bytes(data)
        return list(iter_warc_records(str(path)))


GOOD = malformed_warcs.records(3)


@st.composite
def damaged_warcs(draw) -> tuple[bytes, str]:
    """A small valid WARC (gzip per record or plain), then cut, with bytes overwritten or inserted."""
    gzipped = draw(st.booleans())
    data = bytearray(malformed_warcs.member_per_record(GOOD) if gzipped else b"".join(GOOD))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        patch = draw(st.binary(min_size=1, max_size=16))
        if draw(st.booleans()):
            data[at : at + len(patch)] = patch
        else:
            data[at:at] = patch
    cut = draw(st.integers(0, len(data)))
    return bytes(data[: cut if draw(st.booleans()) else len(data)]), ".warc.gz" if gzipped else ".warc"


def check_reader_rows(rows: list[dict]) -> None:
    assert rows, "a file is at least one row (a reject when nothing is readable)"
    for row in rows:
        assert set(row) >= set(ROW_SCHEMA.names)
        if row["reject_reason"] is None:
            assert row["html"] is not None or row["text"] is not None
        else:
            assert row["reject_reason"] and row["reject_detail"]
    rows_to_table(rows)  # and they fit the reader schema


@FUZZ
@given(data=st.binary(max_size=2000), gzipped=st.booleans())
def test_reader_on_arbitrary_bytes(data, gzipped):
    check_reader_rows(_reader_rows(gzip.compress(data) if gzipped else data, ".warc.gz"))


@FUZZ
@given(damaged=damaged_warcs())
def test_reader_on_damaged_warcs(damaged):
    data, suffix = damaged
    rows = _reader_rows(data, suffix)
    check_reader_rows(rows)
    # damage costs records, it never multiplies them beyond one reject per damaged spot and per record
    assert len(rows) <= len(GOOD) + 8


@functools.cache
def default_recipe():
    return load_recipe()


@settings(FUZZ, max_examples=max(EXAMPLES // 2, 1))
@given(htmls=st.lists(st.one_of(st.none(), HTML), min_size=1, max_size=4), urls=st.lists(URL, max_size=4))
def test_recipe_ends_every_row_as_a_document_or_a_reject(htmls, urls):
    rows = [
        dict.fromkeys(ROW_SCHEMA.names) | {"doc_id": f"d{i}", "url": u, "html": h, "content_type": "text/html"}
        for i, (h, u) in enumerate(zip(htmls, urls + [None] * len(htmls), strict=False))
    ]
    batch = rows_to_table(rows)
    out = run_recipe(default_recipe(), batch)
    assert out.num_rows == batch.num_rows
    assert sorted(out["doc_id"].to_pylist()) == sorted(batch["doc_id"].to_pylist())
    for row in out.select(["reject_reason", "reject_stage", "text"]).to_pylist():
        if row["reject_reason"] is None:
            assert row["reject_stage"] is None and row["text"] and row["text"].strip()
        else:
            assert row["reject_stage"], row
