"""``lake up|down|status`` (local services) and ``lake submit`` (Ray jobs)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lake.cli.context import CliContext, pass_ctx
from lake.cli.output import emit_rows, format_option


@click.command("up")
@pass_ctx
def up_command(obj: CliContext) -> None:
    """Start a local Ray cluster (one node on 127.0.0.1 unless configured) and an MLflow tracking server."""
    from lake import services

    cfg = obj.config
    if cfg.ray_open:
        click.echo(
            f"lake up: warning: Ray listens beyond loopback ({cfg.ray_worker_nodes} worker node(s), host "
            f"{cfg.ray_host}); token authentication is on, token in {cfg.ray_auth_token_path}",
            err=True,
        )
    services.up(cfg, echo=click.echo)
    click.echo(
        f"ready: export RAY_ADDRESS=http://{cfg.ray_host}:{cfg.ray_dashboard_port} "
        f"MLFLOW_TRACKING_URI=http://127.0.0.1:{cfg.mlflow_port}"
    )


@click.command("down")
@pass_ctx
def down_command(obj: CliContext) -> None:
    """Stop the services `lake up` started."""
    from lake import services

    services.down(obj.config, echo=click.echo)


@click.command("status")
@format_option()
@pass_ctx
def status_command(obj: CliContext, fmt: str) -> None:
    """Show the local services: pid, state, endpoints."""
    from lake import services

    rows = services.status(obj.config)
    emit_rows(rows, fmt, ["service", "state", "pid", "endpoint", "address", "detail"])


@click.command("submit", context_settings={"ignore_unknown_options": True})
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
@pass_ctx
def submit_command(obj: CliContext, command: tuple[str, ...]) -> None:
    """Run a lake command as a Ray job: lake submit -- lake import mc FILE --table eval.x"""
    from lake.jobs import submit

    status, exit_code = submit(obj.config, list(command), Path.cwd(), echo=click.echo)
    click.echo(f"job {status}")
    sys.exit(exit_code)  # the job's own status: 2 for a usage error in the job, as if it had run here


COMMANDS = [up_command, down_command, status_command, submit_command]
