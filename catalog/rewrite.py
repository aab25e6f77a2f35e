"""Writing derived tables: signatures, attribute tables, mixes (never the documents themselves).

Labels are not new columns on documents: they live in attribute tables keyed by ``doc_id``
(``catalog.attributes``), so a labelling run writes a few bytes per document instead of rewriting every text.
Derived tables are written from Ray workers (``append_dataset``, ``replace_dataset``: Ray's Iceberg datasink,
nothing collected on the driver) or, when they are small, from the driver (``replace_rows``). A replacement is
always one ``overwrite`` snapshot: Ray's and pyiceberg's own overwrites commit a delete snapshot and then an
append snapshot, so the log would show a state no reader should see (the table without its rows).
"""

from __future__ import annotations

import pyarrow as pa
from pyiceberg.exceptions import NamespaceAlreadyExistsError, TableAlreadyExistsError
from pyiceberg.table import Table

from catalog.schemas import KIND_PROPERTY
from catalog.store import Lakehouse, parse_identifier


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


def _overwrite(lake: Lakehouse, identifier: str, rows, snapshot_properties: dict[str, str] | None):
    from ray.data import SaveMode

    from catalog.one_snapshot_sink import OneSnapshotOverwrite

    sink = OneSnapshotOverwrite(
        table_identifier=identifier,
        catalog_kwargs={"name": lake.name, **lake.catalog_kwargs},
        mode=SaveMode.OVERWRITE,
        overwrite_filter=None,
        snapshot_properties=snapshot_properties or {},
    )
    rows.write_datasink(sink)


def replace_rows(lake: Lakehouse, identifier: str, rows: pa.Table, snapshot_properties: dict[str, str]) -> None:
    """Replace every row of a (small, derived) table with ``rows`` in ONE ``overwrite`` snapshot: every data file
    leaves, the new ones arrive. (pyiceberg's ``Table.overwrite`` commits a delete and an append snapshot.)"""
    from pyiceberg.io.pyarrow import _dataframe_to_data_files

    table = lake.table(identifier)
    if table.current_snapshot() is None:
        table.append(rows, snapshot_properties=snapshot_properties)
        return
    with table.transaction() as txn:
        with txn.update_snapshot(snapshot_properties=snapshot_properties).overwrite() as snapshot:
            for task in txn._scan().plan_files():
                snapshot.delete_data_file(task.file)
            for data_file in _dataframe_to_data_files(
                table_metadata=txn.table_metadata, write_uuid=snapshot.commit_uuid, df=rows, io=table.io
            ):
                snapshot.append_data_file(data_file)
