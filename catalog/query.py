"""Read-only SQL over Iceberg scans with polars; tables are named ``ns.table`` in the query."""

from __future__ import annotations

import re

import polars as pl

from catalog.store import Lakehouse
from lake.errors import UsageError

READ_ONLY_START = re.compile(r"^\s*(select|with|explain|show|describe|desc)\b", re.IGNORECASE)
COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)


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
    text = COMMENTS.sub(" ", sql).strip().rstrip(";").strip()
    if not text:
        raise UsageError("empty query")
    if ";" in text:
        raise UsageError("one statement per query, please")
    if not READ_ONLY_START.match(text):
        raise UsageError("lake query is read-only: only SELECT / WITH queries are allowed")
    return text


def run_query(lake: Lakehouse, sql: str, as_of: str | None = None) -> pl.DataFrame:
    """Execute ``sql``; ``as_of`` (snapshot id, tag or ISO timestamp) pins every table it names.

    A snapshot id belongs to one table, so it is only accepted for a single-table query.
    """
    text = check_read_only(sql)
    known = lake.list_tables()
    tables = referenced_tables(text, known)
    if as_of is not None and str(as_of).strip().isdigit() and len(tables) > 1:
        raise UsageError("a snapshot id pins one table; use a tag or a timestamp for a multi-table query")
    ctx = pl.SQLContext()
    for name in tables:
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
