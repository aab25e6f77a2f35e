"""``lake ingest warc|html|jsonl`` (the curation pipeline) and ``lake extract`` (one page, no catalog)."""

from __future__ import annotations

import sys

import click

from lake.cli.context import CliContext, pass_ctx
from lake.cli.output import emit_json

TABLE_OPTION = click.option(
    "--table",
    default="web.documents",
    show_default=True,
    metavar="NS.TABLE",
    help="Documents table; rejects go to NS.rejects.",
)
RECIPE_OPTION = click.option(
    "--recipe",
    "recipe",
    default=None,
    type=click.Path(dir_okay=False),
    help="Recipe YAML (default: the built-in recipe; `lake init` writes a copy).",
)
FORMAT_OPTION = click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
COMMIT_EVERY_OPTION = click.option(
    "--commit-every",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Inputs per commit: a crashed run keeps the groups it committed, and its re-run skips them.",
)


def _run(
    obj: CliContext,
    kind: str,
    paths: list[str],
    table: str,
    recipe: str | None,
    fmt: str,
    urls_file: str | None = None,
    commit_every: int = 32,
) -> None:
    from pipelines.ingest import ingest
    from pipelines.ingest_tracking import IngestTracking

    with IngestTracking(obj.config, kind, paths) as tracking:
        report = ingest(
            obj.config,
            obj.lake,
            kind,
            paths,
            table=table,
            recipe_path=recipe,
            urls_file=urls_file,
            commit_every=commit_every,
            open_mlflow_run=tracking.open,
        )
        tracking.finish(report)
    if fmt == "json":
        emit_json(report.as_dict())
        return
    for name, counts in report.stages.items():
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(counts.dropped.items(), key=lambda kv: -kv[1]))
        click.echo(f"  {name:<18} in {counts.rows_in:>7}  kept {counts.kept:>7}  {counts.seconds:7.2f}s  {reasons}")
    click.echo(report.summary())


@click.group("ingest")
def ingest_group() -> None:
    """Curate raw web inputs into a documents table (labels as columns, every drop a reject with a reason)."""


def _files_command(kind: str, help_text: str) -> click.Command:
    """``lake ingest warc|jsonl PATH...``: the same options, a different reader."""

    @click.argument("paths", nargs=-1, required=True)
    @TABLE_OPTION
    @RECIPE_OPTION
    @FORMAT_OPTION
    @COMMIT_EVERY_OPTION
    @pass_ctx
    def command(
        obj: CliContext, paths: tuple[str, ...], table: str, recipe: str | None, fmt: str, commit_every: int
    ) -> None:
        _run(obj, kind, list(paths), table, recipe, fmt, commit_every=commit_every)

    return ingest_group.command(kind, help=help_text)(command)


_files_command("warc", "WARC / WARC.gz / WET files, local or fsspec URLs (s3://, https://).")
_files_command("jsonl", "JSON Lines with url and html or text fields.")


@ingest_group.command("html")
@click.argument("directory")
@click.option(
    "--urls",
    "urls_file",
    default=None,
    type=click.Path(dir_okay=False, exists=True),
    help="URL map: JSONL {file, url} or TSV file<TAB>url.",
)
@TABLE_OPTION
@RECIPE_OPTION
@FORMAT_OPTION
@pass_ctx
def ingest_html(
    obj: CliContext, directory: str, urls_file: str | None, table: str, recipe: str | None, fmt: str
) -> None:
    """A folder of .html / .html.gz pages."""
    _run(obj, "html", [directory], table, recipe, fmt, urls_file=urls_file)


@click.command("extract")
@click.argument("source")
@click.option("--url", default=None, help="The page's URL (for URL labels).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@RECIPE_OPTION
def extract_command(source: str, url: str | None, fmt: str, recipe: str | None) -> None:
    """Main text of one HTML page (FILE or - for stdin); json adds title, lang and every label."""
    from pipelines.extract_one import extract_page

    if source == "-":
        payload = sys.stdin.buffer.read()
    else:
        from pathlib import Path

        from lake.errors import UsageError

        if not Path(source).is_file():
            raise UsageError(f"no such file: {source}")
        payload = Path(source).read_bytes()
    result = extract_page(payload, url=url, recipe_path=recipe, gzipped=source.endswith(".gz"))
    if fmt == "json":
        emit_json(result)
    else:
        click.echo(result["text"])


COMMANDS = [ingest_group, extract_command]
