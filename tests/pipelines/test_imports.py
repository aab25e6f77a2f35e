"""Every shared SFT, preference, multiple-choice and text file imports with exact row accounting."""

from __future__ import annotations

import copy
import gzip
import json
import os
import re
from collections import Counter

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from malformed_imports import VALID, build_import_corpus

from catalog.schemas import IMPORT_KINDS, schema_for
from conftest import run_lake
from pipelines.files import Reject
from pipelines.imports import CONVERTERS, import_files

# (kind, path under shared/data, read, imported, {reject reason: count}) — counts from the SOURCES.md files
CASES = [
    ("mc", "eval/cmmlu/dev/*.csv", 335, 335, {}),
    ("sft", "sft/alpaca_en_demo.json", 999, 999, {}),
    ("sft", "sft/alpaca_zh_demo.json", 1000, 1000, {}),
    ("sft", "sft/glaive_toolcall_en_demo.json", 300, 300, {}),
    ("sft", "sft/glaive_toolcall_zh_demo.json", 300, 300, {}),
    ("sft", "sft/belle/belle_eval_set.json", 1000, 631, {"empty_output": 369}),
    ("sft", "sft/belle/belle_eval_prompt.json", 11, 0, {"unrecognized_sft_format": 11}),
    ("sft", "sft/belle/belle_zh_seed_tasks.jsonl", 175, 175, {}),
    ("preference", "preference/hh_rlhf_harmless_base_test.jsonl.gz", 2312, 2312, {}),
    ("preference", "preference/hh_rlhf_helpful_base_test.jsonl.gz", 2354, 2352, {"chosen_equals_rejected": 2}),
    ("preference", "preference/dpo_en_demo.json", 300, 300, {}),
    ("preference", "preference/dpo_zh_demo.json", 300, 300, {}),
    ("text", "text/wiki_demo.txt", 30, 30, {}),
    ("text", "text/c4_demo.jsonl", 300, 300, {}),
    ("text", "text/peoples_daily_ner_sentences.txt", 6954, 6954, {}),
    ("text", "text/cmrc2018_trial_zh_wiki_paragraphs.jsonl", 256, 256, {}),
]


@pytest.mark.parametrize(
    ("kind", "pattern", "read", "imported", "reasons"), CASES, ids=[c[1].rsplit("/", 1)[-1] for c in CASES]
)
def test_import_accounts_for_every_record(lake, data_dir, kind, pattern, read, imported, reasons):
    paths = sorted(str(p) for p in data_dir.glob(pattern))
    assert paths, pattern
    report = import_files(lake, kind, paths, "t.items", progress=False)
    assert (report.read, report.imported, report.rejected) == (read, imported, read - imported)
    assert dict(report.reasons) == reasons
    assert lake.count("t.items") == imported
    assert lake.count("t.rejects") == read - imported

    again = import_files(lake, kind, paths, "t.items", progress=False)
    assert (again.read, again.imported, again.already_present) == (read, 0, imported)
    assert lake.count("t.items") == imported
    assert lake.count("t.rejects") == read - imported, "rejects must not duplicate either"


def test_mc_rows_keep_subject_split_and_answer(lake, data_dir):
    import_files(lake, "mc", [str(data_dir / "eval/cmmlu/dev/agronomy.csv")], "eval.dev", progress=False)
    rows = lake.read("eval.dev").to_pylist()
    first = next(r for r in rows if r["record_key"] == "0")
    assert first["subject"] == "agronomy" and first["split"] == "dev"
    assert first["question"] == "肉牛屠宰后，胴体的哪个部位肉质较好"
    assert first["choices"] == ["胸", "腹", "大腿", "小腿"] and first["answer"] == "C"


def test_hh_transcripts_split_into_prompt_and_final_turns(lake, data_dir):
    path = data_dir / "preference/hh_rlhf_harmless_base_test.jsonl.gz"
    import_files(lake, "preference", [str(path)], "pref.hh", progress=False)
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        raw = json.loads(fh.readline())
    row = next(r for r in lake.read("pref.hh").to_pylist() if r["record_key"] == "1")
    assert row["prompt"][0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert row["prompt"][-1]["role"] == "user"
    # the prompt plus each response rebuilds the original transcripts
    assert raw["chosen"].endswith(row["chosen"]) and raw["rejected"].endswith(row["rejected"])
    assert row["chosen"] != row["rejected"]


def test_sharegpt_roles_are_normalised_and_tools_kept(lake, data_dir):
    import_files(lake, "sft", [str(data_dir / "sft/glaive_toolcall_en_demo.json")], "sft.tools", progress=False)
    rows = lake.read("sft.tools").to_pylist()
    roles = {m["role"] for r in rows for m in r["messages"]}
    assert roles == {"user", "assistant", "function_call", "observation"}
    assert sum(1 for r in rows if r["tools"] and r["tools"] != "[]") == 300 - 109


def test_a_file_of_the_wrong_kind_becomes_rejects(lake, data_dir):
    report = import_files(lake, "mc", [str(data_dir / "sft/alpaca_en_demo.json")], "eval.wrong", progress=False)
    assert (report.read, report.imported, report.rejected) == (999, 0, 999)
    assert dict(report.reasons) == {"missing_field": 999}
    binary = import_files(
        lake, "text", [str(data_dir / "warc/cc-2020-zh-resiliparse.warc.gz")], "text.wrong", progress=False
    )
    assert binary.imported == 0 and binary.rejected == 1


def test_broken_lines_are_rejected_with_reasons(lake, tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"text": "ok"}\n{"text": \n[1, 2]\n{"content": "also ok"}\n{"text": "   "}\n', encoding="utf-8")
    report = import_files(lake, "text", [str(path)], "text.mixed", progress=False)
    assert (report.read, report.imported) == (5, 2)
    assert dict(report.reasons) == {"invalid_json": 1, "not_an_object": 1, "empty_text": 1}
    rejects = lake.read("text.rejects").to_pylist()
    assert {r["record_key"] for r in rejects} == {"2", "3", "5"}
    assert all(r["input_uri"] == str(path) and r["stage"] == "import_text" for r in rejects)


def test_sft_fields_that_are_not_text_are_rejected_as_such(lake, tmp_path):
    path = tmp_path / "odd.json"
    rows = [
        {"instruction": 42, "output": "forty-two"},
        {"instruction": "Add", "input": {"a": 1, "b": 2}, "output": "3"},
        {"instruction": "Add", "input": "1 and 2", "output": "3"},
    ]
    path.write_text(json.dumps(rows))
    report = import_files(lake, "sft", [str(path)], "sft.odd", progress=False)
    assert (report.read, report.imported, report.rejected) == (3, 1, 2), "a dict input must not vanish from the row"
    rejects = sorted(lake.read("sft.rejects").to_pylist(), key=lambda r: r["record_key"])
    assert [r["reason"] for r in rejects] == ["non_text_field", "non_text_field"]
    assert rejects[0]["detail"].startswith("instruction is int") and rejects[1]["detail"].startswith("input is dict")


def test_truncated_gzip_keeps_what_it_read_and_rejects_the_break(lake, tmp_path):
    lines = "".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(2000))
    blob = gzip.compress(lines.encode("utf-8"))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(blob[: len(blob) // 2])
    report = import_files(lake, "text", [str(path)], "text.cut", progress=False)
    assert 0 < report.imported < 2000
    assert report.reasons["unreadable_file"] == 1
    assert report.read == report.imported + report.rejected


def test_runs_are_recorded(lake, data_dir):
    report = import_files(lake, "mc", [str(data_dir / "eval/cmmlu/dev/anatomy.csv")], "eval.a", progress=False)
    runs = lake.read("lake.runs").to_pylist()
    assert len(runs) == 1
    run = runs[0]
    assert run["run_id"] == report.run_id and run["target_table"] == "eval.a" and run["status"] == "succeeded"
    assert run["inputs"][0]["uri"].endswith("anatomy.csv") and len(run["inputs"][0]["digest"]) == 64
    assert json.loads(run["counts"])["imported"] == 5


def _records_per_input(lake, table: str) -> dict[str, int]:
    """Records (not rows: one self-instruct record may give several rows ``key.n``) per input file name."""
    keys = {(r["input_uri"], r["record_key"].split(".")[0]) for r in lake.read(table).to_pylist()}
    return dict(Counter(uri.rsplit("/", 1)[-1] for uri, _ in keys))


@pytest.mark.parametrize("kind", ["sft", "preference", "mc"])
def test_malformed_import_corpus_every_record_imported_or_rejected(lake, lake_env, tmp_path, kind):
    expected = build_import_corpus(tmp_path / kind, kind)
    files = [str(tmp_path / kind / name) for name in sorted(expected)]
    result = run_lake("import", kind, *files, "--table", f"fz.{kind}", env=lake_env)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    summary = re.fullmatch(r"(\d+) read, (\d+) imported, (\d+) rejected", result.stdout.splitlines()[0])
    assert summary, result.stdout
    read, imported, rejected = map(int, summary.groups())
    assert read == imported + rejected and rejected > 0
    assert (lake.count(f"fz.{kind}"), lake.count("fz.rejects")) == (imported, rejected)

    rows, rejects = _records_per_input(lake, f"fz.{kind}"), _records_per_input(lake, "fz.rejects")
    for name, records in expected.items():
        accounted = rows.get(name, 0) + rejects.get(name, 0)
        assert accounted == records if records is not None else accounted > 0, name
    assert rejects["wrong-encodings.jsonl"] == 2 and rows["wrong-encodings.jsonl"] == 2 * len(VALID[kind])
    assert rows["utf8-bom.jsonl"] == len(VALID[kind]), "a BOM is not part of the first record"
    assert rows["huge-line.jsonl"] == 1 + len(VALID[kind])
    reasons = {r["reason"] for r in lake.read("fz.rejects").to_pylist()}
    assert {"invalid_json", "invalid_utf8", "not_an_object", "unreadable_file"} <= reasons
    assert all(r["reason"] and r["stage"] == f"import_{kind}" for r in lake.read("fz.rejects").to_pylist())


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)


@st.composite
def damaged_records(draw, kind: str) -> dict:
    """A valid record of ``kind`` with some fields (top-level or inside a turn) dropped or set to any JSON value."""
    record = copy.deepcopy(draw(st.sampled_from(VALID[kind])))
    for _ in range(draw(st.integers(1, 3))):
        target = record
        nested = [v[0] for v in record.values() if isinstance(v, list) and v and isinstance(v[0], dict)]
        if nested and draw(st.booleans()):
            target = draw(st.sampled_from(nested))
        key = draw(st.sampled_from(sorted(target) + ["extra"]))
        if draw(st.booleans()):
            target.pop(key, None)
        else:
            target[key] = draw(JSON_VALUES)
    return record


@pytest.mark.parametrize("kind", ["sft", "preference", "mc"])
# LAKE_FUZZ_EXAMPLES raises the count for a longer local hunt
@settings(max_examples=int(os.environ.get("LAKE_FUZZ_EXAMPLES", "150")), deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_record_converters_import_or_reject_any_record(kind, data):
    record = data.draw(st.one_of(damaged_records(kind), st.dictionaries(st.text(max_size=10), JSON_VALUES)))
    result = CONVERTERS[kind](record, {"uri": "/data/dev/subject.csv", "format": "jsonl"})
    if isinstance(result, Reject):
        assert result.reason and re.fullmatch(r"[a-z_]+", result.reason)
        return
    assert result, "a record is imported as at least one row, or rejected"
    lineage = {"input_uri": "u", "input_digest": "d", "record_key": "1", "ingested_at": None, "run_id": "r"}
    pa.Table.from_pylist([row | lineage for row in result], schema=schema_for(IMPORT_KINDS[kind]))  # rows fit
