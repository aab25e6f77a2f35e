"""``lake import KIND PATH... --table NS.TABLE``."""

from __future__ import annotations

import time

import click

from lake.cli.context import CliContext, pass_ctx
from lake.cli.output import emit_json
from pipelines.imports import CONVERTERS


@click.command("import")
@click.argument("kind", type=click.Choice(sorted(CONVERTERS)))
@click.argument("paths", nargs=-1, required=True)
@click.option("--table", "table", required=True, metavar="NS.TABLE", help="Target table (created if missing).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@pass_ctx
def import_command(obj: CliContext, kind: str, paths: tuple[str, ...], table: str, fmt: str) -> None:
    """Import text, SFT, preference or multiple-choice files; bad rows go to NS.rejects with a reason.

    Re-importing the same file adds no rows. Example:
    lake import mc ../shared/data/eval/cmmlu/dev/*.csv --table eval.cmmlu_dev
    """
    from pipelines.imports import import_files

    started = time.perf_counter()
    report = import_files(obj.lake, kind, list(paths), table)
    if fmt == "json":
        emit_json(report.as_dict() | {"seconds": round(time.perf_counter() - started, 3)})
        return
    click.echo(report.summary())
    if report.reasons:
        reasons = ", ".join(f"{reason} {n}" for reason, n in report.reasons.most_common())
        click.echo(f"rejects -> {table.split('.')[0]}.rejects: {reasons}")
    click.echo(f"{table} @ snapshot {report.snapshot_id} in {time.perf_counter() - started:.1f}s")


COMMANDS = [import_command]
