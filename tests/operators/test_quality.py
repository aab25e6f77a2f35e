"""Quality labelers on real gold text: Chinese news must pass with CJK-aware rules and fail with plain
English ones."""

import json
from collections import Counter

import pyarrow as pa
import pytest

from operators.quality import C4Quality, FineWebQuality, GopherQuality, GopherRepetition
from operators.text import data_dir

FAMILIES = {
    GopherQuality: "gopher_reason",
    C4Quality: "c4_reason",
    FineWebQuality: "fineweb_reason",
    GopherRepetition: "gopher_repetition_reason",
}


@pytest.fixture(scope="module")
def cx_gold() -> pa.Table:
    root = data_dir() / "web" / "cx-extractor" / "Text"
    texts = [(root / f"{i}.txt").read_bytes().decode("gbk") for i in range(1, 75)]
    return pa.table({"text": texts})


@pytest.fixture(scope="module")
def en_article_gold() -> pa.Table:
    root = data_dir() / "web" / "magic-html"
    rows = [json.loads(line) for line in (root / "index.jsonl").open(encoding="utf-8")]
    texts = [
        (root / r["gold_text_path"]).read_text(encoding="utf-8")
        for r in rows
        if r["language"] == "en" and r["type"] == "article"
    ]
    return pa.table({"text": texts})


def pass_rate(op, table: pa.Table) -> float:
    reasons = op(table).column(FAMILIES[type(op)]).to_pylist()
    return sum(r is None for r in reasons) / len(reasons)


@pytest.mark.parametrize("cls", [GopherQuality, C4Quality, FineWebQuality])
def test_chinese_news_passes_only_with_cjk_rules(cls, cx_gold):
    assert pass_rate(cls(), cx_gold) >= 0.9
    assert pass_rate(cls(cjk_aware=False), cx_gold) < 0.5


def test_chinese_detected_from_lang_column(cx_gold):
    # lang column wins over the character ratio: "en" forces the plain rules even for Chinese text
    table = cx_gold.append_column("lang", pa.array(["en"] * cx_gold.num_rows))
    out = GopherQuality()(table)
    assert not any(out.column("gopher_cjk").to_pylist())
    assert pass_rate(GopherQuality(), table) < 0.5
    zh = cx_gold.append_column("lang", pa.array(["zh"] * cx_gold.num_rows))
    assert all(GopherQuality()(zh).column("gopher_cjk").to_pylist())


def test_english_articles_mostly_pass(en_article_gold):
    assert pass_rate(GopherQuality(), en_article_gold) >= 0.9
    assert pass_rate(C4Quality(), en_article_gold) >= 0.75
    assert pass_rate(FineWebQuality(), en_article_gold) >= 0.6
    assert pass_rate(GopherRepetition(), en_article_gold) >= 0.8


def test_english_rules_fail_with_stable_reasons(cx_gold):
    gopher = Counter(GopherQuality(cjk_aware=False)(cx_gold).column("gopher_reason").to_pylist())
    assert gopher.most_common(1)[0][0] == "gopher_short_doc"
    c4 = set(C4Quality(cjk_aware=False)(cx_gold).column("c4_reason").to_pylist())
    assert c4 == {"c4_too_few_sentences"}
    fw = set(FineWebQuality(cjk_aware=False)(cx_gold).column("fineweb_reason").to_pylist())
    assert fw == {"fineweb_line_punct_ratio"}


def test_each_gopher_rule_has_its_reason():
    words = " ".join(["the cat and the dog sat with a friend"] * 10)
    cases = {
        "short words only.": "gopher_short_doc",
        "# " * 60 + words: "gopher_too_many_hashes",
        ("- item of the list\n" * 60): "gopher_too_many_bullets",
        " ".join(["the cat and the dog ..."] * 20): "gopher_too_many_ellipsis",
        ("and so it goes with the list of items ...\n" * 20): "gopher_too_many_end_ellipsis",
        " ".join(["123 456 789 the and"] * 30): "gopher_below_alpha_threshold",
        " ".join(["cat dog sat mat hat"] * 20): "gopher_few_stop_words",
        words: None,
    }
    out = GopherQuality()(pa.table({"text": list(cases)}))
    assert out.column("gopher_reason").to_pylist() == list(cases.values())


def test_repetition_and_fineweb_catch_repeated_lines():
    text = "\n".join(["Buy cheap watches online today, best price guaranteed."] * 20)
    table = pa.table({"text": [text]})
    assert GopherRepetition()(table).column("gopher_repetition_reason")[0].as_py() == "gopher_dup_line_frac"
    assert FineWebQuality()(table).column("fineweb_reason")[0].as_py() == "fineweb_char_dup_ratio"


def test_c4_document_rules():
    good = "This is a proper sentence here. " * 2
    texts = [f"{good}\nfunction x() {{ return 1; }}.", "Lorem ipsum dolor sit amet.", good]
    table = pa.table({"text": texts})
    assert C4Quality()(table).column("c4_reason").to_pylist() == [
        "c4_curly_bracket",
        "c4_lorem_ipsum",
        "c4_too_few_sentences",
    ]
