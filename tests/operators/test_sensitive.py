"""Keyword and PII labelers on real lexicons."""

import time

import pyarrow as pa
import pytest

from operators.sensitive import PII, KeywordMatcher, SensitiveContent, valid_cn_id
from operators.text import data_dir


@pytest.fixture(scope="module")
def sensitive() -> SensitiveContent:
    return SensitiveContent()


def test_matches_categories_and_whole_words(sensitive):
    texts = ["有人在网上出售雷管炸药", "I passed the class assessment", "", "go fuck yourself"]
    out = sensitive(pa.table({"text": texts}))
    cats = out.column("sensitive_categories").to_pylist()
    assert "guns_explosives" in cats[0]
    # "ass" is on the C4 list but must match whole words only
    assert "badwords_en" not in cats[1]
    assert out.column("sensitive_hits").to_pylist()[2] == 0
    assert "badwords_en" in cats[3]
    assert 0 < out.column("sensitive_ratio").to_pylist()[3] <= 1


def test_matcher_longest_non_overlapping():
    m = KeywordMatcher({"中国": {"x"}, "中国人民": {"y"}, "人民": {"z"}, "民": {"single"}, "ab": {"en"}})
    assert m.find("我们中国人民人民民 xab ab") == [(2, 6, "中国人民"), (6, 8, "人民"), (14, 16, "ab")]


def test_patterns_option():
    op = SensitiveContent(
        lexicons=[str(data_dir() / "lexicons" / "badwords" / "ldnoobw" / "en_c4.txt")],
        patterns={"crypto_scam": r"double your (bitcoin|btc)"},
    )
    out = op(pa.table({"text": ["Double your Bitcoin now!"]}))
    assert out.column("sensitive_categories")[0].as_py() == ["crypto_scam"]


def test_throughput_on_chinese_news(sensitive):
    root = data_dir() / "web" / "cx-extractor" / "Text"
    texts = [(root / f"{i}.txt").read_bytes().decode("gbk") for i in range(1, 75)]
    t0 = time.perf_counter()
    for t in texts:
        sensitive.label(t)
    chars_per_s = sum(map(len, texts)) / (time.perf_counter() - t0)
    assert chars_per_s > 300_000  # measured ~3 M chars/s on one core


def test_cn_id_checksum():
    assert valid_cn_id("11010519491231002X")
    assert not valid_cn_id("110105194912310021")  # wrong check digit
    assert not valid_cn_id("110105194913310025")  # month 13


def test_pii_detects_and_masks():
    text = (
        "联系张三 13812345678 或 zhang.san@example.com，身份证11010519491231002X；"
        "call +1 415-555-0123, id 110105194912310021"
    )
    out = PII(mask=True)(pa.table({"text": [text, "nothing here"]}))
    assert out.column("pii_count").to_pylist() == [4, 0]
    assert out.column("pii_types")[0].as_py() == ["cn_id", "email", "phone"]
    masked = out.column("text")[0].as_py()
    assert "<PHONE>" in masked and "<EMAIL>" in masked and "<ID_NUMBER>" in masked
    assert "13812345678" not in masked and "110105194912310021" in masked  # invalid ID left alone
    assert PII(detect_ip=True).find("server 192.168.1.10 and 999.1.1.1")[0][2] == "ip"
    unmasked = PII()(pa.table({"text": [text]}))
    assert unmasked.column("text")[0].as_py() == text
