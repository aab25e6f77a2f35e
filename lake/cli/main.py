"""``lake``: a thin command line over the library; each noun lives in its own module."""

from __future__ import annotations

import os
import sys

import click

from lake.cli.context import CliContext
from lake.config import load_config, publish
from lake.errors import LakeError
from pipelines.ray_env import lost_worker


class LakeGroup(click.Group):
    """Maps llm-lake's errors to one line on stderr and exit code 2 (usage) or 1 (internal)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LakeError as exc:
            click.echo(f"lake: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("lake: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # an internal failure: one line unless LAKE_DEBUG asks for the traceback
            if os.environ.get("LAKE_DEBUG"):
                raise
            message = str(exc).splitlines()[0] if str(exc) else ""
            if lost_worker(exc):
                click.echo(
                    f"lake: error: a Ray node or worker was lost mid-run ({type(exc).__name__}: {message}); "
                    "what was committed stays: run the same command again to resume",
                    err=True,
                )
                sys.exit(1)
            click.echo(f"lake: internal error: {type(exc).__name__}: {message} (LAKE_DEBUG=1 shows more)", err=True)
            sys.exit(1)


@click.group(cls=LakeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="LAKE_CONFIG",
    help="lake.toml to read (default: ./lake.toml when present).",
)
@click.pass_context
def cli(ctx: click.Context, config_file: str | None) -> None:
    """llm-lake: raw web crawl to a registered chat model, on one Iceberg catalog."""
    try:
        config = load_config(config_file)
    except LakeError as exc:
        click.echo(f"lake: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    # Ray reads these in every process it starts (auth: stack.md, never leave it to chance; the data dir also
    # when it came from --config, which workers would not find)
    publish(config)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    ctx.obj = CliContext(config)


def _register() -> None:
    from lake.cli import (
        catalog_cmd,
        config_cmd,
        dedup_cmd,
        eval_cmd,
        import_cmd,
        ingest_cmd,
        label_cmd,
        mix_cmd,
        models_cmd,
        query_cmd,
        services_cmd,
        train_cmd,
    )

    for module in (
        config_cmd,
        catalog_cmd,
        query_cmd,
        import_cmd,
        ingest_cmd,
        dedup_cmd,
        label_cmd,
        mix_cmd,
        train_cmd,
        eval_cmd,
        models_cmd,
        services_cmd,
    ):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="lake")


if __name__ == "__main__":
    main()
