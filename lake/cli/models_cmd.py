"""``lake models`` and ``lake lineage``: the registry and the chain from a model back to raw inputs."""

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


COMMANDS = [models_command, lineage_command]
