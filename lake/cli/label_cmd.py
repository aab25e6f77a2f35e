"""``lake label ppl|quality NS.TABLE --model URI``: model-based labels written as attribute tables (``NS.TABLE__ppl``,
``NS.TABLE__quality``); the documents table is never rewritten."""

from __future__ import annotations

import click

from lake.cli.context import CliContext, pass_ctx
from lake.cli.output import emit_json

FORMAT = click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
EXECUTOR = click.option(
    "--executor",
    type=click.Choice(["auto", "local", "ray"]),
    default="auto",
    show_default=True,
    help="local: in this process; ray: an actor pool (a cluster, GPUs); auto: ray on a cluster or a big table.",
)
MODEL = click.option("--model", "model_uri", required=True, metavar="models:/NAME/V", help="Registered model version.")


@click.group("label")
def label_group() -> None:
    """Label a table's documents with a registered model; labels land in NS.TABLE__LABELER, keyed by doc_id.

    Re-running on the same snapshot does nothing; on a newer snapshot only the new documents are labelled. Read
    documents with their labels through the view NS.TABLE__labels, e.g.
    lake query "SELECT ppl_bucket, count(*) FROM web.documents__labels GROUP BY 1".
    """


def _emit(report, fmt: str) -> None:
    if fmt == "json":
        emit_json(report.as_dict())
    else:
        click.echo(report.summary())


@label_group.command("ppl")
@click.argument("table", metavar="NS.TABLE")
@MODEL
@click.option(
    "--max-tokens", "max_tokens", type=int, default=1024, show_default=True, help="Tokens scored per document."
)
@click.option(
    "--batch-tokens", "batch_tokens", type=int, default=2048, show_default=True, help="Padded tokens per forward."
)
@EXECUTOR
@FORMAT
@pass_ctx
def ppl_command(
    obj: CliContext, table: str, model_uri: str, max_tokens: int, batch_tokens: int, executor: str, fmt: str
) -> None:
    """Per-document perplexity (ppl, ppl_tokens) under a reference LM, and CCNet buckets (ppl_bucket:
    head/middle/tail at the corpus's 30th/60th percentiles per language)."""
    from lake.errors import UsageError
    from training.quality import label_ppl

    if max_tokens < 1 or batch_tokens < 2:
        raise UsageError("--max-tokens and --batch-tokens must be positive")
    _emit(label_ppl(obj.config, table, model_uri, max_tokens=max_tokens, batch_tokens=batch_tokens,
                    progress=fmt == "table", executor=executor), fmt)  # fmt: skip


@label_group.command("quality")
@click.argument("table", metavar="NS.TABLE")
@MODEL
@EXECUTOR
@FORMAT
@pass_ctx
def quality_command(obj: CliContext, table: str, model_uri: str, executor: str, fmt: str) -> None:
    """quality_score in [0, 1] from a classifier made by `lake train quality-classifier`."""
    from training.quality import label_quality

    _emit(label_quality(obj.config, table, model_uri, progress=fmt == "table", executor=executor), fmt)


COMMANDS = [label_group]
