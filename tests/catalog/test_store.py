"""The SQLite Iceberg catalog: idempotent appends, snapshots, tags, time travel, schema evolution, races."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from catalog.query import run_query
from lake.errors import UsageError


def _rows(digest: str, n: int, start: int = 0) -> pa.Table:
    return pa.table(
        {
            "doc_id": [f"{digest}-{i}" for i in range(start, start + n)],
            "text": [f"text {i}" for i in range(start, start + n)],
            "input_digest": [digest] * n,
            "record_key": [str(i) for i in range(start, start + n)],
        }
    )


def test_append_is_idempotent_per_input_and_record(lake):
    lake.ensure_table("t.docs", "text")
    first = lake.append("t.docs", _rows("a", 10))
    assert (first.offered, first.written) == (10, 10)
    again = lake.append("t.docs", _rows("a", 12))  # 10 old + 2 new records of the same input
    assert again.written == 2
    assert lake.append("t.docs", _rows("a", 12)).written == 0
    assert lake.count("t.docs") == 12
    assert len(lake.snapshots("t.docs")) == 2, "an append that adds nothing makes no snapshot"


def test_duplicate_keys_within_one_batch_are_written_once(lake):
    lake.ensure_table("t.docs", "text")
    batch = pa.concat_tables([_rows("a", 3), _rows("a", 3)])
    assert lake.append("t.docs", batch).written == 3


def test_snapshots_tags_and_time_travel(lake):
    lake.ensure_table("t.docs", "text")
    lake.append("t.docs", _rows("a", 5))
    lake.tag("t.docs", "v1")
    between = datetime.now(UTC)
    lake.append("t.docs", _rows("b", 7))
    snaps = lake.snapshots("t.docs")
    assert [s.summary["total-records"] for s in snaps] == ["5", "12"]
    assert snaps[0].timestamp < snaps[1].timestamp and snaps[0].operation == "append"
    assert lake.count("t.docs", snaps[0].snapshot_id) == 5
    assert lake.count("t.docs", "v1") == 5
    assert lake.count("t.docs", between.isoformat()) == 5
    assert lake.count("t.docs") == 12
    assert run_query(lake, "SELECT count(*) AS n FROM t.docs", as_of="v1")["n"][0] == 5
    # moving a tag
    lake.tag("t.docs", "v1", snaps[1].snapshot_id)
    assert lake.count("t.docs", "v1") == 12
    with pytest.raises(UsageError, match="no snapshot 42"):
        lake.tag("t.docs", "bad", 42)
    with pytest.raises(UsageError, match="no snapshot at or before"):
        lake.resolve_snapshot("t.docs", "2001-01-01T00:00:00")


def test_adding_a_label_column_does_not_rewrite_data_files(lake):
    lake.ensure_table("t.docs", "text")
    lake.append("t.docs", _rows("a", 5))
    table = lake.table("t.docs")
    files_before = {f.file.file_path for f in table.scan().plan_files()}
    stats_before = {p: os.stat(p.removeprefix("file://")).st_mtime_ns for p in files_before}
    old_snapshot = table.current_snapshot().snapshot_id

    lake.add_columns("t.docs", [pa.field("lang", pa.string()), pa.field("quality", pa.float64())])
    lake.append("t.docs", _rows("b", 2).append_column("lang", pa.array(["zh", "en"])))

    table = lake.table("t.docs")
    assert "lang" in table.schema().column_names and "quality" in table.schema().column_names
    files_after = {f.file.file_path for f in table.scan().plan_files()}
    assert files_before < files_after, "old files are kept as they are, one new file is added"
    assert {p: os.stat(p.removeprefix("file://")).st_mtime_ns for p in files_before} == stats_before
    current = run_query(lake, "SELECT lang, count(*) AS n FROM t.docs GROUP BY lang ORDER BY lang")
    assert sorted(current.to_dicts(), key=str) == [
        {"lang": "en", "n": 1},
        {"lang": "zh", "n": 1},
        {"lang": None, "n": 5},
    ]
    old = lake.read("t.docs", as_of=old_snapshot)
    assert old.num_rows == 5 and "lang" not in old.column_names, "time travel reads the old schema"


CONCURRENT_WRITER = """
import sys
import pyarrow as pa
from catalog.store import Lakehouse
from lake.config import load_config
lake = Lakehouse.from_config(load_config())
digest = sys.argv[1]
for round_ in range(5):
    rows = pa.table({"doc_id": [f"{digest}{round_}-{i}" for i in range(20)], "text": ["x"] * 20,
                     "input_digest": [f"{digest}{round_}"] * 20, "record_key": [str(i) for i in range(20)]})
    assert lake.append("t.docs", rows).written == 20
"""


def test_concurrent_commits_from_two_processes_both_land(lake, lake_env):
    lake.ensure_table("t.docs", "text")
    env = lake_env | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_WRITER, name],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("p", "q")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
    assert lake.count("t.docs") == 2 * 5 * 20
    assert len(lake.snapshots("t.docs")) == 10


def test_kind_mismatch_and_bad_names_are_usage_errors(lake):
    lake.ensure_table("t.docs", "text")
    with pytest.raises(UsageError, match="holds 'text' rows"):
        lake.ensure_table("t.docs", "mc")
    with pytest.raises(UsageError, match="NS.TABLE"):
        lake.ensure_table("nodot", "text")
    with pytest.raises(UsageError, match="unknown table t.nope; known tables: t.docs"):
        lake.table("t.nope")


def _race_once(monkeypatch, method: str, rival) -> None:
    """Make ``Lakehouse.<method>`` (the check of what a commit would add) let ``rival`` commit right after the
    check, once: the lost race of two writers of the same input, without timing luck."""
    from catalog.store import Lakehouse

    real = getattr(Lakehouse, method)
    raced: list[bool] = []

    def racing(*args):
        found = real(*args)
        if not raced:
            raced.append(True)
            rival()
        return found

    monkeypatch.setattr(Lakehouse, method, staticmethod(racing) if method == "_inputs_present" else racing)


def test_a_writer_that_loses_the_race_for_an_input_adds_nothing_twice(lake, monkeypatch):
    from catalog.store import Lakehouse

    lake.ensure_table("t.docs", "text")
    rival = Lakehouse(lake.catalog_kwargs, lake.name)  # another process's catalog connection
    rows = _rows("a", 5)

    def rival_lands_the_same_input() -> None:
        rival.append_files("t.docs", {"a": rival.file_writer("t.docs").write(rows)})

    _race_once(monkeypatch, "_inputs_present", rival_lands_the_same_input)
    result = lake.append_files("t.docs", {"a": lake.file_writer("t.docs").write(rows)})
    assert result.written == 0 and lake.count("t.docs") == 5, "the loser re-checks after the conflict"

    _race_once(monkeypatch, "_new_rows", lambda: rival.append("t.docs", _rows("b", 4)))
    assert lake.append("t.docs", _rows("b", 4)).written == 0
    assert lake.count("t.docs") == 9
