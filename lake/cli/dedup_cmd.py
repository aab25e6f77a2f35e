"""``lake dedup NS.TABLE``: label exact and near-duplicate documents (dup_cluster_id, dup_cluster_size, dup_keep) in
the attribute table NS.TABLE__dedup."""

from __future__ import annotations

import click

from lake.cli.context import CliContext, pass_ctx
from lake.cli.output import emit_json
from lake.errors import UsageError

TOKENIZER_CHOICES = ("auto", "char", "word")


@click.command("dedup")
@click.argument("table", metavar="NS.TABLE")
@click.option(
    "--threshold",
    type=float,
    default=0.8,
    show_default=True,
    help="Jaccard similarity of shingle sets at or above which two documents are duplicates.",
)
@click.option(
    "--ngram",
    type=int,
    default=5,
    show_default=True,
    help="Shingle size in tokens: words, or characters in Chinese/Japanese text.",
)
@click.option("--num-perm", "num_perm", type=int, default=128, show_default=True, help="MinHash permutations.")
@click.option(
    "--scope",
    type=click.Choice(["table", "batch"]),
    default="table",
    show_default=True,
    help="table: new rows against everything already there; batch: new rows among themselves.",
)
@click.option(
    "--tokenizer",
    type=click.Choice(TOKENIZER_CHOICES),
    default="auto",
    show_default=True,
    help="auto: words, each CJK character a token; char: every letter; word: space-separated runs.",
)
@click.option(
    "--quality",
    default=None,
    metavar="COLUMN|SQL",
    help="Keeper quality, higher wins (default: number of passed *_reason filters).",
)
@click.option("--no-verify", "no_verify", is_flag=True, help="Keep LSH candidates without checking similarity.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@pass_ctx
def dedup_command(
    obj: CliContext,
    table: str,
    threshold: float,
    ngram: int,
    num_perm: int,
    scope: str,
    tokenizer: str,
    quality: str | None,
    no_verify: bool,
    fmt: str,
) -> None:
    """Label duplicates of NS.TABLE in the attribute table NS.TABLE__dedup (keyed by doc_id); nothing is deleted
    and the documents are not rewritten. Read them through the view NS.TABLE__labels.

    Exact duplicates (normalised text, URL) and near duplicates (MinHash LSH) become one cluster with one keeper
    (highest quality, then earliest fetch_time, then doc_id). Signatures are stored in NS.TABLE_minhash, so a
    later crawl batch is compared against them without re-hashing. Filter mixes on dup_keep. Example:
    lake dedup web.documents --threshold 0.8
    """
    from pipelines.dedup import DedupConfig, dedup_table

    try:
        config = DedupConfig(
            threshold=threshold,
            ngram=ngram,
            num_perm=num_perm,
            scope=scope,
            tokenizer=tokenizer,
            quality=quality,
            verify=not no_verify,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    report = dedup_table(obj.lake, obj.config, table, config, progress=fmt == "table")
    if fmt == "json":
        emit_json(report.as_dict())
        return
    click.echo(report.summary())
    if report.up_to_date:
        return
    sizes = ", ".join(f"{size}: {n}" for size, n in sorted(report.size_histogram.items()))
    click.echo(
        f"cluster sizes: {sizes or 'none'}; LSH {report.bands} bands x {report.rows} rows; "
        f"{report.hashed} signatures computed"
    )
    tail = f"; MLflow run {report.mlflow_run_id}" if report.mlflow_run_id else ""
    click.echo(f"{report.attribute_table} @ snapshot {report.snapshot_id}{tail}")


COMMANDS = [dedup_command]
