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


# ways a query could reach a file: table functions in every position and spelling, globs, URIs, quoted paths,
# and statements or clauses that write ({csv}, {parquet}, {ndjson} and {dir} are files outside the catalog)
BYPASSES = [
    "SELECT * FROM read_csv('{csv}')",
    "SELECT * FROM READ_CSV('{csv}')",
    "SELECT * FROM \"read_csv\"('{csv}')",
    "SELECT * FROM read_csv(E'{csv}')",
    "SELECT * FROM read_csv(['{csv}', '{csv}'])",
    "SELECT * FROM read_csv('{dir}/*.csv')",
    "SELECT * FROM read_csv('file://{csv}')",
    "SELECT * FROM read_parquet('{dir}/*.parquet')",
    "SELECT * FROM read_ndjson('{ndjson}')",
    "SELECT * FROM read_json('{ndjson}')",
    "SELECT * FROM scan_csv('{csv}')",
    "SELECT * FROM scan_parquet('{parquet}')",
    "SELECT * FROM '{parquet}'",
    'SELECT * FROM "{parquet}"',
    "SELECT * FROM 'file://{parquet}'",
    "SELECT doc_id FROM a.one UNION ALL SELECT secret FROM read_csv('{csv}')",
    "(SELECT doc_id FROM a.one) UNION (SELECT secret FROM read_csv('{csv}'))",
    "VALUES ('x') UNION SELECT secret FROM read_csv('{csv}')",
    "SELECT * FROM a.one WHERE doc_id IN (SELECT secret FROM read_parquet('{parquet}'))",
    "SELECT * FROM a.one WHERE EXISTS (SELECT 1 FROM read_csv('{csv}'))",
    "SELECT * FROM a.one, LATERAL (SELECT * FROM read_csv('{csv}'))",
    "WITH read_csv AS (SELECT 1 AS a) SELECT * FROM read_csv('{csv}')",
    "WITH RECURSIVE r AS (SELECT * FROM read_csv('{csv}')) SELECT * FROM r",
    "SELECT * FROM read_csv /* hidden */ ('{csv}')",
    "SELECT * FROM a.one -- comment\n, read_csv('{csv}')",
    "COPY a.one TO '{dir}/out.csv'",
    "COPY (SELECT * FROM a.one) TO '{dir}/out.parquet'",
    "CREATE TABLE c.three AS SELECT * FROM read_csv('{csv}')",
    "INSERT INTO a.one SELECT * FROM read_csv('{csv}')",
    "WITH x AS (SELECT * FROM a.one) INSERT INTO b.two SELECT * FROM x",
    "WITH x AS (SELECT * FROM a.one) DELETE FROM b.two",
    "SELECT * INTO c.copy FROM a.one",
    "SELECT * FROM a.one INTO OUTFILE '{dir}/out.csv'",
]


def test_no_query_reads_or_writes_files_outside_the_catalog(two_tables, tmp_path):
    import polars as pl

    outside = tmp_path / "outside"
    outside.mkdir()
    secret = pl.DataFrame({"secret": ["canary"]})
    files = {"csv": outside / "s.csv", "parquet": outside / "s.parquet", "ndjson": outside / "s.ndjson"}
    secret.write_csv(files["csv"]), secret.write_parquet(files["parquet"]), secret.write_ndjson(files["ndjson"])
    # the canaries are readable: polars itself would read them with these very table functions
    assert pl.SQLContext().execute(f"SELECT * FROM read_csv('{files['csv']}')", eager=True)["secret"][0] == "canary"
    for template in BYPASSES:
        sql = template.format(dir=outside, **files)
        with pytest.raises(UsageError, match="catalog tables only|not files|unknown table|read-only|syntax error"):
            run_query(two_tables, sql)
    assert sorted(p.name for p in outside.iterdir()) == ["s.csv", "s.ndjson", "s.parquet"]
    assert two_tables.list_tables() == ["a.one", "b.two"]
    assert run_query(two_tables, "SELECT count(*) AS n FROM b.two")["n"][0] == 5  # nothing written


@pytest.mark.parametrize(
    "name",
    ["../etc.passwd", "a.b/../../c", "web.docs\n", "'web'.docs", '"web.docs"', "web.docs;DROP", "a.b.c", ".docs",
     "web.", "web docs.x", "file:///tmp.x", "s3://bucket.x", "web.docs\x00", "wéb.docs", "web.ｄocs", "", "web.docs ",
     "a" * 129 + ".b", "web\\x.docs", "web.%2e%2e"],
)  # fmt: skip
def test_bad_table_names_are_refused_before_the_catalog(lake, name):
    with pytest.raises(UsageError, match="must look like NS.TABLE"):
        lake.ensure_table(name, "text")
    assert lake.list_tables() == []


def test_ctes_and_quoted_names_still_work(two_tables):
    sql = 'WITH x AS (SELECT doc_id FROM "a.one") SELECT count(*) AS n FROM x JOIN b.two USING (doc_id)'
    assert run_query(two_tables, sql)["n"][0] == 4
