"""``lake catalog tables|schema|snapshots|tag``."""

from __future__ import annotations

import click

from lake.cli.context import CliContext, pass_ctx
from lake.cli.output import emit_json, emit_rows, format_option


@click.group("catalog")
def catalog_group() -> None:
    """Tables, schemas, snapshots and tags of the Iceberg catalog."""


@catalog_group.command("tables")
@format_option()
@pass_ctx
def tables_command(obj: CliContext, fmt: str) -> None:
    """List tables with their row counts and current snapshot; a note when no lake.runs row vouches for it."""
    from catalog.runs import unrecorded_snapshot

    lake = obj.lake
    rows = []
    for name in lake.list_tables():
        gap = unrecorded_snapshot(lake, name)
        note = f"run {gap['run_id']} not in lake.runs: interrupted (re-run it) or still running" if gap else ""
        snapshot_id = lake.resolve_snapshot(name, None)
        rows.append({"table": name, "rows": lake.count(name), "snapshot_id": snapshot_id, "note": note})
    emit_rows(rows, fmt, ["table", "rows", "snapshot_id", "note"])


@catalog_group.command("schema")
@click.argument("table")
@format_option()
@pass_ctx
def schema_command(obj: CliContext, table: str, fmt: str) -> None:
    """Show the current schema of NS.TABLE (field id, name, type, nullability)."""
    schema = obj.lake.table(table).schema()
    rows = [
        {"id": f.field_id, "name": f.name, "type": str(f.field_type), "required": f.required} for f in schema.fields
    ]
    emit_rows(rows, fmt, ["id", "name", "type", "required"])


@catalog_group.command("snapshots")
@click.argument("table")
@format_option()
@pass_ctx
def snapshots_command(obj: CliContext, table: str, fmt: str) -> None:
    """List the snapshots of NS.TABLE, oldest first."""
    snaps = [s.as_dict() for s in obj.lake.snapshots(table)]
    if fmt == "json":
        emit_json(snaps)
        return
    tags_by_id: dict[int, list[str]] = {}
    for name, sid in obj.lake.tags(table).items():
        tags_by_id.setdefault(sid, []).append(name)
    rows = [
        {
            "snapshot_id": s["snapshot_id"],
            "timestamp": s["timestamp"],
            "operation": s["operation"],
            "added": s["summary"].get("added-records", ""),
            "total": s["summary"].get("total-records", ""),
            "tags": ",".join(sorted(tags_by_id.get(s["snapshot_id"], []))),
        }
        for s in snaps
    ]
    emit_rows(rows, fmt, ["snapshot_id", "timestamp", "operation", "added", "total", "tags"])


@catalog_group.command("tag")
@click.argument("table")
@click.argument("name")
@click.option("--snapshot", "snapshot_id", type=int, default=None, help="Snapshot to tag (default: current).")
@pass_ctx
def tag_command(obj: CliContext, table: str, name: str, snapshot_id: int | None) -> None:
    """Tag a snapshot of NS.TABLE as NAME (moving the tag if it exists)."""
    sid = obj.lake.tag(table, name, snapshot_id)
    click.echo(f"tagged {table}@{sid} as {name}")


COMMANDS = [catalog_group]
