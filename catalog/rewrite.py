"""Writing a new version of a whole table (or of some of its rows) with label columns, and side tables.

Labels such as ``dup_cluster_id`` are new columns on existing rows. Iceberg cannot update a column in place, so
a labelling pipeline (1) adds the columns through schema evolution (``Lakehouse.add_columns``: old data files are
untouched and old snapshots keep reading as before), then (2) writes the labelled rows as one new snapshot that
replaces the rows it was computed from. The rows travel as a Ray Dataset, written by Ray's Iceberg datasink from
the workers: nothing is collected on the driver. The replacement is one ``overwrite`` snapshot: Ray's own
OVERWRITE commits a delete snapshot and then an append snapshot, so the log would show a state no reader should
see (the table without the rows) as a version of its own.

The replacement is guarded: if the table moved past ``base_snapshot_id`` while the labels were computed (a
concurrent append), the write is refused instead of silently dropping the newcomer's rows.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
from pyiceberg.exceptions import NamespaceAlreadyExistsError, TableAlreadyExistsError
from pyiceberg.table import Table

from catalog.schemas import KIND_PROPERTY
from catalog.store import Lakehouse, parse_identifier
from lake.errors import LakeError


class TableMovedError(LakeError):
    """The table got a new snapshot while a rewrite was being computed."""


def ensure_side_table(
    lake: Lakehouse, identifier: str, schema: pa.Schema, kind: str, properties: dict[str, str]
) -> Table:
    """Create a derived table (e.g. stored signatures) unless it exists; refresh its properties."""
    namespace, _ = parse_identifier(identifier)
    catalog = lake.catalog
    if not catalog.table_exists(identifier):
        try:
            catalog.create_namespace(namespace)
        except NamespaceAlreadyExistsError:
            pass
        try:
            catalog.create_table(identifier, schema=schema, properties={KIND_PROPERTY: kind, **properties})
        except TableAlreadyExistsError:
            pass
    table = catalog.load_table(identifier)
    stale = {k: v for k, v in properties.items() if table.properties.get(k) != v}
    if stale:
        with table.transaction() as txn:
            txn.set_properties(stale)
        table = catalog.load_table(identifier)
    return table


def _check_base(lake: Lakehouse, identifier: str, base_snapshot_id: int | None) -> None:
    current = lake.resolve_snapshot(identifier, None)
    if current != base_snapshot_id:
        raise TableMovedError(
            f"{identifier} changed while it was being labelled (snapshot {base_snapshot_id} -> {current}); run again"
        )


def rewrite_with_columns(
    lake: Lakehouse,
    identifier: str,
    rows,  # ray.data.Dataset of every row of the table at base_snapshot_id, with the new columns
    new_fields: Iterable[pa.Field],
    base_snapshot_id: int | None,
    snapshot_properties: dict[str, str] | None = None,
    only_rows=None,  # ray.data.expressions.Expr: replace only the rows matching it (rows holds just those)
) -> int | None:
    """Add ``new_fields`` to the schema, then replace the table's rows (or those matching ``only_rows``) with ``rows``.

    Returns the new current snapshot id.
    """
    _check_base(lake, identifier, base_snapshot_id)
    lake.add_columns(identifier, list(new_fields))
    _check_base(lake, identifier, base_snapshot_id)
    _overwrite(lake, identifier, rows, snapshot_properties, only_rows)
    return lake.resolve_snapshot(identifier, None)


def append_dataset(lake: Lakehouse, identifier: str, rows, snapshot_properties: dict[str, str] | None = None) -> None:
    """Append a Ray Dataset to ``identifier`` from the workers (no idempotency check: derived data only)."""
    rows.write_iceberg(
        table_identifier=identifier,
        catalog_kwargs={"name": lake.name, **lake.catalog_kwargs},
        snapshot_properties=snapshot_properties or {},
    )


def replace_dataset(lake: Lakehouse, identifier: str, rows, snapshot_properties: dict[str, str] | None = None) -> None:
    """Replace every row of a derived table with a Ray Dataset."""
    _overwrite(lake, identifier, rows, snapshot_properties)


def _overwrite(lake: Lakehouse, identifier: str, rows, snapshot_properties: dict[str, str] | None, only_rows=None):
    from ray.data import SaveMode

    from catalog.one_snapshot_sink import OneSnapshotOverwrite

    sink = OneSnapshotOverwrite(
        table_identifier=identifier,
        catalog_kwargs={"name": lake.name, **lake.catalog_kwargs},
        mode=SaveMode.OVERWRITE,
        overwrite_filter=only_rows,
        snapshot_properties=snapshot_properties or {},
    )
    rows.write_datasink(sink)
