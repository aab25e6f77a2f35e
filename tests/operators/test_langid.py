"""language_id with the shared lid.176.ftz model on real text."""

from __future__ import annotations

import json
import pickle

import pyarrow as pa
import pytest

from operators.ingest import iter_warc_records
from operators.langid import LanguageID
from operators.resources_paths import data_dir

WEB = data_dir() / "web" / "magic-html"


@pytest.fixture(scope="module")
def op() -> LanguageID:
    return LanguageID()


def detect(op: LanguageID, texts: list[str | None]) -> list[tuple[str | None, float | None]]:
    out = op(pa.table({"text": pa.array(texts, pa.string())}))
    assert out.schema.field("lang_score").type == pa.float32()
    return list(zip(out.column("lang").to_pylist(), out.column("lang_score").to_pylist(), strict=True))


def test_gold_texts_by_language(op):
    # magic-html's index labels each page's language from its gold text: lid.176 must agree on zh and en.
    entries = [json.loads(line) for line in open(WEB / "index.jsonl", encoding="utf-8")]
    entries = [e for e in entries if e["language"] in ("zh", "en") and not e["gold_empty"]]
    texts = [(WEB / e["gold_text_path"]).read_text(encoding="utf-8") for e in entries]
    result = detect(op, texts)
    agree = sum(lang == e["language"] for (lang, _), e in zip(result, entries, strict=True))
    assert len(entries) == 211 and agree / len(entries) >= 0.97


def test_plain_text_files(op):
    paragraphs = [
        json.loads(line)["text"] for line in open(data_dir() / "text" / "cmrc2018_trial_zh_wiki_paragraphs.jsonl")
    ]
    assert {lang for lang, _ in detect(op, paragraphs)} == {"zh"}
    wiki = (data_dir() / "text" / "wiki_demo.txt").read_text(encoding="utf-8").splitlines()[:5]
    result = detect(op, wiki)
    assert all(lang == "en" and 0.5 < score <= 1.0 for lang, score in result)


def test_wet_record_agrees_with_common_crawl(op):
    # The record (an.wikipedia.org) carries Common Crawl's own guess, WARC-Identified-Content-Language: spa.
    (row,) = iter_warc_records(str(data_dir() / "warc" / "cc-2024-22-whirlwind.warc.wet.gz"))
    assert detect(op, [row["text"]])[0][0] == "es"


def test_newlines_and_empty_text(op):
    text = "这是第一行中文。\n这是第二行，也是中文。\n"
    (joined, _), (none, none_score), (blank, _) = detect(op, [text, None, " \n "])
    assert joined == "zh" and none is None and none_score is None and blank is None


def test_lazy_load_and_pickle(op):
    fresh = LanguageID()
    assert fresh._model is None  # nothing loaded until the first batch
    detect(op, ["hello world, this is English"])
    copy = pickle.loads(pickle.dumps(op))
    assert copy._model is None and detect(copy, ["Guten Tag, wie geht es Ihnen heute?"])[0][0] == "de"
    with pytest.raises(ValueError, match="model not found"):
        LanguageID(model_path="/nonexistent/lid.176.ftz")
