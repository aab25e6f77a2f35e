"""``lake models``, ``lake lineage`` and ``lake summary``: the registry, the chain from a model back to raw inputs,
and a report of everything a lake home holds."""

from __future__ import annotations

import click

from lake.cli.context import CliContext, pass_ctx
from lake.cli.output import emit_json, emit_rows, format_option

MODEL_COLUMNS = ["name", "version", "aliases", "kind", "stage", "table", "snapshot_id", "tokenizer", "parent", "run_id"]
LINEAGE_COLUMNS = ["kind", "name", "version", "run_id", "table", "snapshot_id", "uri"]


@click.command("models")
@format_option()
@pass_ctx
def models_command(obj: CliContext, fmt: str) -> None:
    """Registered models and versions with aliases and lineage tags (the MLflow UI shows the same)."""
    from training.registry import all_versions

    rows = all_versions(obj.config)
    if fmt == "json":
        emit_json(rows)
    else:
        emit_rows(rows, fmt, MODEL_COLUMNS)


@click.command("lineage")
@click.argument("model_uri", metavar="MODEL_URI")
@format_option()
@pass_ctx
def lineage_command(obj: CliContext, model_uri: str, fmt: str) -> None:
    """From models:/NAME/V back to runs, tokenizer, dataset snapshots, pipeline runs and raw inputs. Example:

    lake lineage models:/tiny-web/1 --format json
    """
    from training.lineage import lineage

    nodes = lineage(obj.config, model_uri)
    if fmt == "json":
        emit_json(nodes)
    else:
        emit_rows(nodes, fmt, LINEAGE_COLUMNS)


@click.command("summary")
@click.option("--model", "model_uri", metavar="MODEL_URI", help="Also walk this model's lineage (models:/NAME/V).")
@click.option("--started", type=float, help="Epoch seconds a session started: report the wall time since.")
@format_option(choices=("table", "json"))
@pass_ctx
def summary_command(obj: CliContext, model_uri: str | None, started: float | None, fmt: str) -> None:
    """Tables and snapshots, registered models, a model's lineage, eval figures, and where to look next. Example:

    lake summary --model models:/tiny-ppo/1
    """
    from training.summary import lake_summary, summary_text

    report = lake_summary(obj.config, model_uri, started)
    if fmt == "json":
        emit_json(report)
    else:
        click.echo(summary_text(report))


COMMANDS = [models_command, lineage_command, summary_command]
