"""``lake eval MODEL_URI --suite pairs``: evaluation suites for registered models (this issue: reward models on
preference pairs; the evaluation issue adds the others)."""

from __future__ import annotations

import click

from lake.cli.context import CliContext, pass_ctx
from lake.cli.output import emit_json, emit_rows, format_option
from lake.errors import UsageError

SUITES = ("pairs",)


@click.command("eval")
@click.argument("model_uri", metavar="MODEL_URI")
@click.option("--suite", "suites", multiple=True, type=click.Choice(SUITES), default=("pairs",), show_default=True)
@click.option("--pairs-table", "pairs_table", default=None, metavar="NS.TABLE", help="Preference pairs to score.")
@click.option("--where", default=None, metavar="SQL", help="Predicate over the pairs table.")
@click.option("--as-of", "as_of", default=None, metavar="ID|TAG", help="Snapshot id or tag (default: current).")
@format_option()
@pass_ctx
def eval_command(obj: CliContext, model_uri, suites, pairs_table, where, as_of, fmt) -> None:
    """Score a registered model. Example:

    lake eval models:/tiny-rm/1 --suite pairs --pairs-table pref.pairs --format json
    """
    from training.posttrain import eval_pairs

    report = {}
    if "pairs" in suites:
        if not pairs_table:
            raise UsageError("--suite pairs needs --pairs-table NS.TABLE")
        report["pairs"] = eval_pairs(obj.config, model_uri, pairs_table, where=where, as_of=as_of)
    if fmt == "json":
        emit_json(report)
    else:
        rows = [{"suite": name} | {k: v for k, v in figures.items() if k in ("n", "accuracy", "ci95", "mean_margin")}
                for name, figures in report.items()]  # fmt: skip
        emit_rows(rows, fmt, ["suite", "n", "accuracy", "ci95", "mean_margin"])


COMMANDS = [eval_command]
