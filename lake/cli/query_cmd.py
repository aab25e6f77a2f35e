"""``lake query "SQL"``: read-only polars SQL over Iceberg tables."""

from __future__ import annotations

import click

from lake.cli.context import CliContext, pass_ctx
from lake.cli.output import emit_rows, format_option


@click.command("query")
@click.argument("sql")
@click.option(
    "--as-of",
    "as_of",
    default=None,
    metavar="SNAPSHOT_ID|TAG|ISO_TIMESTAMP",
    help="Time travel: a snapshot id (single-table query), or a tag or timestamp for every table.",
)
@format_option()
@pass_ctx
def query_command(obj: CliContext, sql: str, as_of: str | None, fmt: str) -> None:
    """Run SQL over the catalog; tables are named ns.table.

    Example: lake query "SELECT subject, count(*) AS n FROM eval.cmmlu_dev GROUP BY subject"
    """
    from catalog.query import run_query

    frame = run_query(obj.lake, sql, as_of=as_of)
    emit_rows(frame.to_dicts(), fmt, frame.columns)


COMMANDS = [query_command]
