"""``lake query`` semantics: read-only SQL over Iceberg scans, time travel across tables."""

from __future__ import annotations

import pyarrow as pa
import pytest

from catalog.query import check_read_only, referenced_tables, run_query
from lake.errors import UsageError


@pytest.fixture
def two_tables(lake):
    for name, n in (("a.one", 3), ("b.two", 4)):
        lake.ensure_table(name, "text")
        lake.append(
            name,
            pa.table(
                {
                    "doc_id": [str(i) for i in range(n)],
                    "text": ["t"] * n,
                    "input_digest": ["d"] * n,
                    "record_key": [str(i) for i in range(n)],
                }
            ),
        )
        lake.tag(name, "release")
        lake.append(name, pa.table({"doc_id": ["x"], "text": ["t"], "input_digest": ["e"], "record_key": ["0"]}))
    return lake


def test_join_across_tables_and_tag_applies_to_every_table(two_tables):
    sql = "SELECT (SELECT count(*) FROM a.one) AS a, (SELECT count(*) FROM b.two) AS b"
    assert run_query(two_tables, sql).to_dicts() == [{"a": 4, "b": 5}]
    assert run_query(two_tables, sql, as_of="release").to_dicts() == [{"a": 3, "b": 4}]


def test_snapshot_id_only_for_single_table_queries(two_tables):
    sid = two_tables.snapshots("a.one")[0].snapshot_id
    assert run_query(two_tables, "SELECT count(*) AS n FROM a.one", as_of=str(sid))["n"][0] == 3
    with pytest.raises(UsageError, match="pins one table"):
        run_query(two_tables, "SELECT * FROM a.one JOIN b.two USING (doc_id)", as_of=str(sid))


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM a.one",
        "INSERT INTO a.one VALUES (1)",
        "DROP TABLE a.one",
        "CREATE TABLE x AS SELECT 1",
        "SELECT 1; DROP TABLE a.one",
        "   ",
    ],
)
def test_writes_are_refused(sql):
    with pytest.raises(UsageError):
        check_read_only(sql)


def test_unknown_table_names_known_ones_and_bad_sql_is_a_usage_error(two_tables):
    with pytest.raises(UsageError, match="known tables: a.one, b.two"):
        run_query(two_tables, "SELECT * FROM c.three")
    with pytest.raises(UsageError, match="syntax error"):
        run_query(two_tables, "SELECT FROM WHERE a.one")
    with pytest.raises(UsageError, match="syntax error"):
        run_query(two_tables, "SELEC * FRM")
    with pytest.raises(UsageError, match="nocolumn"):
        run_query(two_tables, "SELECT nocolumn FROM a.one")


def test_referenced_tables_ignores_lookalikes():
    known = ["a.one", "b.two"]
    assert referenced_tables('SELECT * FROM a.one, "b.two"', known) == ["a.one", "b.two"]
    assert referenced_tables("SELECT * FROM xa.one", known) == []
    assert referenced_tables("SELECT * FROM a.ones", known) == []


@pytest.mark.parametrize(
    "source",
    [
        "read_csv('/etc/os-release', has_header => false)",
        "read_json('/etc/os-release')",
        "read_ndjson('/etc/os-release')",
        "read_parquet('/etc/os-release')",
        "read_ipc('/etc/os-release')",
        "'file:///etc/os-release'",
        '"/etc/os-release"',
    ],
)
def test_only_catalog_tables_can_be_read(two_tables, source):
    for sql in (
        f"SELECT * FROM {source}",
        f"SELECT * FROM a.one JOIN {source} AS f ON true",
        f"WITH f AS (SELECT * FROM {source}) SELECT * FROM f",
        f"SELECT (SELECT count(*) FROM {source}) AS n FROM a.one",
    ):
        with pytest.raises(UsageError, match="catalog tables only|unknown table"):
            run_query(two_tables, sql)


def test_ctes_and_quoted_names_still_work(two_tables):
    sql = 'WITH x AS (SELECT doc_id FROM "a.one") SELECT count(*) AS n FROM x JOIN b.two USING (doc_id)'
    assert run_query(two_tables, sql)["n"][0] == 4
