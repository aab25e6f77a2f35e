"""Read-only SQL over Iceberg scans with polars; tables are named ``ns.table`` in the query."""

from __future__ import annotations

import logging
import re

import polars as pl
import sqlglot
from sqlglot import exp

from catalog.attributes import VIEW_SUFFIX, joined_frame, labelled_sources, view_name
from catalog.store import Lakehouse
from core.errors import UsageError

logging.getLogger("sqlglot").setLevel(logging.ERROR)  # its "falling back to a Command" warning is not ours to print
COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
READ_STATEMENTS = {"SELECT", "WITH", "DESCRIBE", "DESC", "SHOW", "(", "VALUES"}
WRITE_STATEMENTS = {
    "INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT", "REPLACE", "CREATE", "DROP", "ALTER", "TRUNCATE", "COPY",
    "ATTACH", "DETACH", "SET", "GRANT", "REVOKE", "CALL", "EXPORT", "IMPORT", "INSTALL", "LOAD", "PRAGMA", "VACUUM",
}  # fmt: skip
# statements, clauses and nodes that write, wherever they sit in the tree (``WITH x AS (…) INSERT …`` starts like a
# query; ``SELECT … INTO t`` creates a table)
WRITE_NODES = (exp.Insert, exp.Delete, exp.Update, exp.Merge, exp.Create, exp.Drop, exp.Alter, exp.Copy, exp.Into)
# polars SQL's table functions (read_csv, read_parquet, read_json, read_ndjson, read_ipc, …) read any file
FILE_FUNCTION = re.compile(r"^(read|scan)_", re.IGNORECASE)


def referenced_tables(sql: str, known: list[str]) -> list[str]:
    """Known ``ns.table`` names that the query mentions (optionally quoted)."""
    found = []
    for name in known:
        ns, tbl = name.split(".", 1)
        pattern = rf'(?<![\w."]){re.escape(ns)}\.{re.escape(tbl)}(?![\w])|"{re.escape(name)}"'
        if re.search(pattern, sql):
            found.append(name)
    return found


def check_read_only(sql: str) -> str:
    """The query without comments, if it is one read-only statement; a usage error otherwise."""
    text = COMMENTS.sub(" ", sql).strip().rstrip(";").strip()
    if not text:
        raise UsageError("empty query")
    first = text.split(None, 1)[0].upper()
    first = "(" if first.startswith("(") else first
    if first in WRITE_STATEMENTS:
        raise UsageError("lake query is read-only: only SELECT / WITH queries are allowed")
    if first not in READ_STATEMENTS:
        raise UsageError(f"SQL syntax error: a query starts with SELECT or WITH, not {first[:20]!r}")
    statements = [s for s in _parse(text) if s is not None]
    if len(statements) != 1:
        raise UsageError("one statement per query, please")
    return text


def _parse(text: str) -> list[exp.Expression | None]:
    try:
        return sqlglot.parse(text)
    except sqlglot.errors.SqlglotError as exc:
        raise UsageError(f"SQL syntax error: {str(exc).splitlines()[0][:200]}") from None


def check_sources(text: str, known: list[str]) -> None:
    """Only catalog tables (and the query's own CTEs) may be read: no table functions, paths or URIs."""
    (tree,) = _parse(text)
    if isinstance(tree, exp.Command):  # what sqlglot cannot read: only SHOW TABLES is known to be harmless
        if text.upper().split() != ["SHOW", "TABLES"]:
            raise UsageError(f"SQL syntax error: cannot read {text[:60]!r}")
        return
    if not isinstance(tree, exp.Query | exp.Values | exp.Describe) or tree.find(*WRITE_NODES):
        raise UsageError("lake query is read-only: only SELECT / WITH queries are allowed")
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    for func in tree.find_all(exp.Func):
        name = func.sql_name() if not isinstance(func, exp.Anonymous) else func.name
        if FILE_FUNCTION.match(name or ""):
            raise UsageError(f"lake query reads catalog tables only, not files ({name.lower()}(…))")
    for table in tree.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            raise UsageError(f"lake query reads catalog tables only; {table.this.sql()[:80]} is not one")
        name = ".".join(part.name for part in table.parts)
        if name in known or name.lower() in ctes:
            continue
        raise UsageError(f"unknown table {name[:120]}; known tables: {', '.join(known) or 'none yet'}")


def run_query(lake: Lakehouse, sql: str, as_of: str | None = None) -> pl.DataFrame:
    """Execute ``sql``; ``as_of`` (snapshot id, tag or ISO timestamp) pins every table it names.

    A snapshot id belongs to one table, so it is only accepted for a single-table query. ``NS.TABLE__labels``
    names a labelled table's documents joined with all of its attribute tables (``catalog.attributes``).
    """
    text = check_read_only(sql)
    catalog_tables = lake.list_tables()
    known = catalog_tables + [view_name(t) for t in labelled_sources(catalog_tables)]
    check_sources(text, known)
    tables = referenced_tables(text, known)
    if as_of is not None and str(as_of).strip().isdigit() and len(tables) > 1:
        raise UsageError("a snapshot id pins one table; use a tag or a timestamp for a multi-table query")
    ctx = pl.SQLContext()
    for name in tables:
        if name.endswith(VIEW_SUFFIX) and name not in catalog_tables:
            ctx.register(name, joined_frame(lake, name.removesuffix(VIEW_SUFFIX), as_of=as_of))
        else:
            ctx.register(name, _scan(lake, name, as_of))
    try:
        return ctx.execute(text, eager=True)
    except pl.exceptions.SQLInterfaceError as exc:
        message = str(exc).splitlines()[0]
        if "not found" in message or "does not exist" in message:
            message += f"; known tables: {', '.join(known) or 'none yet'}"
        raise UsageError(f"query failed: {message}") from None
    except (
        pl.exceptions.SQLSyntaxError,
        pl.exceptions.ColumnNotFoundError,
        pl.exceptions.InvalidOperationError,
        pl.exceptions.SchemaError,
    ) as exc:
        raise UsageError(f"query failed: {str(exc).splitlines()[0]}") from None


def _scan(lake: Lakehouse, name: str, as_of: str | None) -> pl.LazyFrame:
    table = lake.table(name)
    snapshot_id = lake.resolve_snapshot(name, as_of)
    if snapshot_id is None:  # a table with no data yet: an empty frame with its columns
        return pl.from_arrow(table.schema().as_arrow().empty_table()).lazy()
    if as_of is None:  # the current state reads with the current schema (evolved columns included)
        return pl.scan_iceberg(table)
    return pl.scan_iceberg(table, snapshot_id=snapshot_id)
