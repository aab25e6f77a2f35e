"""Hard filters as polars SQL, the keep/drop split and mergeable stage counts."""

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


def test_sql_predicates_and_null_semantics():
    assert mask("url_blocked") == [False, False, False, False, True]
    assert mask("lang IN ('zh', 'en')") == [True, True, False, False, True]
    assert mask("coalesce(lang, '') NOT IN $keep", keep=["zh", "en"]) == [False, False, True, True, False]
    assert mask("lang NOT IN $keep", keep=["zh", "en"]) == [False, False, True, False, False]  # SQL: null is kept
    assert mask("lang != 'zh'") == [False, True, True, False, False]
    assert mask("lang_score < 0.5") == [False, True, False, False, False]  # null never orders
    assert mask("lang_score>=0.9") == [True, False, True, False, False]  # float32 0.9 compares as float32
    assert mask("lang IS NULL") == [False, False, False, True, False]
    assert mask("coalesce(trim(text), '') = ''") == [False, False, True, True, False]
    assert mask("lang = 'zh' AND NOT url_blocked") == [True, False, False, False, False]
    assert mask("lang_score < $cut", cut=0.95) == [False, True, True, False, True]


@pytest.mark.parametrize(
    "text,message",
    [
        ("__import__('os').system('x')", "cannot parse"),
        ("lang ==", "cannot parse"),
        ("lang in zh", "cannot parse"),
        ("lang IN $nope", "unknown variable"),
        ("lang; DROP TABLE x", "cannot parse"),
        ("1 = 1", "reads no column"),
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
    with pytest.raises(ValueError, match="not a boolean"):
        Predicate.parse("lang_score + 1").mask(BATCH)
    all_null = pa.table({"lang": pa.nulls(2)})
    assert Predicate.parse("coalesce(lang, '') NOT IN ('zh')").mask(all_null).tolist() == [True, True]


def test_split_first_match_wins_and_rows_are_conserved():
    decision = Decision(
        [
            {"name": "url_blocked", "when": "url_blocked", "stage": "url_filter"},
            {"name": "empty_extraction", "when": "coalesce(trim(text), '') = ''"},
            {"name": "lang_not_kept", "when": "coalesce(lang, '') NOT IN ('zh', 'en')", "detail": "lang"},
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
        Decision([{"name": "a", "when": "lang IS NULL"}, {"name": "a", "when": "lang IS NULL"}])
    with pytest.raises(ValueError, match="snake_case"):
        Decision([{"name": "Bad Name", "when": "lang IS NULL"}])


def test_reader_rejects_go_first_under_ingest():
    rows = list(iter_warc_records(str(data_dir() / "warc" / "clipped-truncated-resiliparse.warc.gz")))
    rows += list(iter_warc_records(str(data_dir() / "warc" / "wget-2024-en-dolma-sample-0001.warc.gz")))
    batch = rows_to_table(rows)
    kept, rejected = Decision([{"name": "no_text", "when": "coalesce(trim(html), '') = ''"}]).split(batch)
    assert kept.num_rows == 15 and rejected.num_rows == 1
    assert rejected.select(["reject_stage", "reject_reason"]).to_pylist() == [
        {"reject_stage": "ingest", "reject_reason": "warc_truncated"}
    ]
    assert rejected.column("reject_detail")[0].as_py().startswith("record body has")


def test_stage_counts_merge_and_round_trip():
    decision = Decision([{"name": "lang_not_kept", "when": "coalesce(lang, '') NOT IN ('zh')"}])
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
