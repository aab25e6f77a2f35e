"""Predicate grammar, the keep/drop split and mergeable stage counts."""

from __future__ import annotations

import pyarrow as pa
import pytest

from operators.decide import Decision, Predicate, StageCounts
from operators.ingest import iter_warc_records, rows_to_table
from operators.resources_paths import data_dir

BATCH = pa.table(
    {
        "lang": pa.array(["zh", "en", "ja", None, "zh"], pa.string()),
        "lang_score": pa.array([0.99, 0.4, 0.9, None, 0.8], pa.float32()),
        "url_blocked": [False, False, False, False, True],
        "text": ["中文", "english", "  ", None, "x"],
    }
)


def mask(text: str, **variables) -> list[bool]:
    return Predicate.parse(text, variables).mask(BATCH).tolist()


def test_grammar_and_null_semantics():
    assert mask("url_blocked == true") == [False, False, False, False, True]
    assert mask("lang in [zh, 'en']") == [True, True, False, False, True]
    assert mask("lang not in $keep", keep=["zh", "en"]) == [False, False, True, True, False]  # null is not in
    assert mask("lang != zh") == [False, True, True, True, False]
    assert mask("lang == zh") == [True, False, False, False, True]
    assert mask("lang_score < 0.5") == [False, True, False, False, False]  # null never orders
    assert mask("lang_score>=0.9") == [True, False, True, False, False]
    assert mask("lang is null") == [False, False, False, True, False]
    assert mask("lang is not null") == [True, True, True, False, True]
    assert mask("text is empty") == [False, False, True, True, False]


@pytest.mark.parametrize(
    "text,message",
    [
        ("__import__('os').system('x')", "cannot parse"),
        ("lang ==", "needs a value"),
        ("lang in zh", "needs a \\[list\\]"),
        ("lang in $nope", "unknown variable"),
        ("lang == null", "is null"),
        ("lang is null 3", "takes no value"),
        ("lang == a;b", "cannot read value"),
    ],
)
def test_bad_predicates_fail_at_parse(text, message):
    with pytest.raises(ValueError, match=message):
        Predicate.parse(text)


def test_type_mismatch_and_missing_column():
    with pytest.raises(ValueError, match="does not apply"):
        Predicate.parse("lang < 3").mask(BATCH)
    with pytest.raises(ValueError, match="no column"):
        Predicate.parse("quality > 1").mask(BATCH)
    all_null = pa.table({"lang": pa.nulls(2)})
    assert Predicate.parse("lang not in [zh]").mask(all_null).tolist() == [True, True]


def test_split_first_match_wins_and_rows_are_conserved():
    decision = Decision(
        [
            {"name": "url_blocked", "when": "url_blocked == true", "stage": "url_filter"},
            {"name": "empty_extraction", "when": "text is empty"},
            {"name": "lang_not_kept", "when": "lang not in [zh, en]", "detail": "lang"},
        ]
    )
    kept, rejected = decision.split(BATCH)
    assert kept.column("lang").to_pylist() == ["zh", "en"]
    assert kept.schema == BATCH.schema
    assert rejected.column("reject_reason").to_pylist() == [
        "empty_extraction",
        "empty_extraction",
        "url_blocked",
    ]
    assert rejected.column("reject_stage").to_pylist() == ["decide", "decide", "url_filter"]
    assert rejected.column("reject_detail").to_pylist()[2] == "url_blocked=True"
    with pytest.raises(ValueError, match="unique"):
        Decision([{"name": "a", "when": "lang is null"}, {"name": "a", "when": "lang is null"}])
    with pytest.raises(ValueError, match="snake_case"):
        Decision([{"name": "Bad Name", "when": "lang is null"}])


def test_reader_rejects_go_first_under_ingest():
    rows = list(iter_warc_records(str(data_dir() / "warc" / "clipped-truncated-resiliparse.warc.gz")))
    rows += list(iter_warc_records(str(data_dir() / "warc" / "wget-2024-en-dolma-sample-0001.warc.gz")))
    batch = rows_to_table(rows)
    kept, rejected = Decision([{"name": "no_text", "when": "html is empty"}]).split(batch)
    assert kept.num_rows == 15 and rejected.num_rows == 1
    assert rejected.select(["reject_stage", "reject_reason"]).to_pylist() == [
        {"reject_stage": "ingest", "reject_reason": "warc_truncated"}
    ]
    assert rejected.column("reject_detail")[0].as_py().startswith("record body has")


def test_stage_counts_merge_and_round_trip():
    decision = Decision([{"name": "lang_not_kept", "when": "lang not in [zh]"}])
    first = StageCounts.from_split(*decision.split(BATCH), seconds=0.5)
    assert (first.rows_in, first.kept, first.dropped) == (5, 2, {"lang_not_kept": 3})
    second = StageCounts(rows_in=4, kept=1, dropped={"lang_not_kept": 1, "warc_truncated": 2}, seconds=1.0)
    total = first + second
    assert total.to_dict() == {
        "rows_in": 9,
        "kept": 3,
        "dropped": 6,
        "dropped_lang_not_kept": 4,
        "dropped_warc_truncated": 2,
        "seconds": 1.5,
    }
    assert StageCounts.from_dict(total.to_dict()) == total
    assert total.rows_in == total.kept + total.dropped_total
