"""``lake config`` and ``lake init``."""

from __future__ import annotations

from pathlib import Path

import click

from lake.cli.context import CliContext, pass_ctx
from lake.cli.output import emit_json, format_option
from lake.examples import write_examples


@click.command("config")
@format_option(choices=("table", "json"))
@pass_ctx
def config_command(obj: CliContext, fmt: str) -> None:
    """Print the effective configuration (defaults < lake.toml < environment)."""
    values = obj.config.as_dict()
    if fmt == "json":
        emit_json(values)
        return
    width = max(len(k) for k in values)
    for key, value in values.items():
        click.echo(f"{key.ljust(width)}  {value}")


@click.command("init")
@click.argument("directory", type=click.Path(file_okay=False), default=".")
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
def init_command(directory: str, force: bool) -> None:
    """Write lake.toml and commented example configs for every pipeline into DIRECTORY."""
    written, kept = write_examples(Path(directory), force=force)
    for path in written:
        click.echo(f"wrote {path}")
    for path in kept:
        click.echo(f"kept  {path} (exists; --force overwrites)")


COMMANDS = [config_command, init_command]
