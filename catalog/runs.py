"""Run records: one row per pipeline or import run in ``lake.runs``, so every snapshot has a why."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pyarrow as pa

from catalog.schemas import RUNS_TABLE, schema_for
from catalog.store import Lakehouse


def record_run(
    lake: Lakehouse,
    *,
    command: str,
    target_table: str,
    run_id: str,
    started_at: datetime,
    inputs: list[dict],
    counts: dict,
    snapshot_id: int | None,
    status: str = "succeeded",
    mlflow_run_id: str | None = None,
    error: str | None = None,
    part: int = 0,
) -> None:
    """One row of ``lake.runs``; a run that commits in several groups records one row per ``part``."""
    lake.ensure_table(RUNS_TABLE, "runs")
    row = {
        "command": command,
        "target_table": target_table,
        "status": status,
        "started_at": started_at,
        "finished_at": datetime.now(UTC),
        "inputs": inputs,
        "counts": json.dumps(counts, default=str),
        "snapshot_id": snapshot_id,
        "mlflow_run_id": mlflow_run_id,
        "error": error,
        "input_uri": None,
        "input_digest": run_id,
        "record_key": "run" if part == 0 else f"run#{part}",  # the row's identity: one per part
        "ingested_at": started_at,
        "run_id": run_id,
    }
    lake.append(RUNS_TABLE, pa.Table.from_pylist([row], schema=schema_for("runs")))


def committed_inputs(lake: Lakehouse, target_table: str, command: str) -> set[str]:
    """Digests of inputs that a succeeded run of ``command`` already committed to ``target_table``."""
    if not lake.exists(RUNS_TABLE):
        return set()
    runs = lake.read(RUNS_TABLE, columns=("command", "target_table", "status", "inputs")).to_pylist()
    return {
        item["digest"]
        for run in runs
        if run["command"] == command and run["target_table"] == target_table and run["status"] == "succeeded"
        for item in run["inputs"] or []
    }


def unrecorded_snapshot(lake: Lakehouse, table: str) -> dict | None:
    """The current snapshot of ``table`` when no ``lake.runs`` row vouches for it, else None.

    A run commits its tables one after the other and records itself in ``lake.runs`` last (Iceberg has no
    transaction across tables), so a driver killed in between leaves rows visible that no run accounts for; the
    re-run completes them. Readers see that gap here: the snapshot carries the run's ``lake.run_id`` but no run row
    for this table names it.
    """
    snapshot = lake.table(table).current_snapshot()
    run_id = snapshot.summary.additional_properties.get("lake.run_id") if snapshot and snapshot.summary else None
    if run_id is None or not lake.exists(RUNS_TABLE):
        return {"snapshot_id": snapshot.snapshot_id, "run_id": run_id} if run_id else None
    runs = lake.read(RUNS_TABLE, columns=("run_id", "target_table", "snapshot_id", "status")).to_pylist()
    mine = [r for r in runs if r["target_table"] == table and r["status"] == "succeeded"]
    if any(r["snapshot_id"] == snapshot.snapshot_id for r in mine):
        return None
    of_run = [r for r in runs if r["run_id"] == run_id]
    # a run's side tables (rejects, signatures) are vouched for by its rows for the table it targets
    if of_run and not any(r["target_table"] == table for r in of_run):
        return None
    return {"snapshot_id": snapshot.snapshot_id, "run_id": run_id}
