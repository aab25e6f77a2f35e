"""``lake mix SPEC.yaml``: resolve a label-driven sampling mix on pinned snapshots into a catalog table."""

from __future__ import annotations

import click

from lake.cli.context import CliContext, pass_ctx
from lake.cli.output import emit_json, emit_rows, format_option

BUCKET_COLUMNS = ["name", "source", "documents_available", "tokens_available", "tokens_taken", "documents_taken",
                  "effective_epochs", "max_epochs", "capped"]  # fmt: skip


@click.command("mix")
@click.argument("spec_file", metavar="SPEC.yaml", type=click.Path(dir_okay=False))
@format_option()
@pass_ctx
def mix_command(obj: CliContext, spec_file: str, fmt: str) -> None:
    """Sample buckets (SQL over documents and their labels) to a token budget, phase by phase, and write the mix
    as mix.NAME tagged digest-…; the same spec on the same snapshots gives the same digest. `lake init` writes an
    example spec; train on it with `data: {mix: NAME}` (or NAME@TAG) in a pretrain config."""
    from training.mix import load_spec, run_mix

    report = run_mix(obj.config, load_spec(spec_file))
    if fmt == "json":
        emit_json(report.as_dict())
        return
    emit_rows(report.buckets, fmt, BUCKET_COLUMNS)
    if fmt == "table":
        phases = [{"phase": p["name"], "share": p["share"], "tokens": p["tokens"], "documents": p["documents"]}
                  | p["buckets"] for p in report.phases]  # fmt: skip
        emit_rows(phases, fmt)
        click.echo(report.summary())


COMMANDS = [mix_command]
