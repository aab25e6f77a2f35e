"""Ray's Iceberg datasink with an OVERWRITE that commits one snapshot (see ``catalog.rewrite``).

A module of its own because it imports Ray: the sink is pickled to the write tasks, which import it there.
"""

from __future__ import annotations

import itertools

from ray.data._internal.datasource.iceberg_datasink import IcebergDatasink


class OneSnapshotOverwrite(IcebergDatasink):
    """OVERWRITE as a single ``overwrite`` snapshot: the files holding replaced rows leave, the written files
    arrive, and a file that also holds rows outside the filter is rewritten with just those (pyiceberg's
    ``Transaction.delete`` does the same, but in a snapshot of its own before Ray's append)."""

    def _commit_overwrite(self, txn, data_files) -> None:
        from pyiceberg.expressions import AlwaysTrue
        from pyiceberg.expressions.visitors import bind
        from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files, _expression_to_complementary_pyarrow
        from ray.data._internal.datasource.iceberg_datasource import _IcebergExpressionVisitor

        metadata = txn.table_metadata
        schema = metadata.schema()
        where = (
            AlwaysTrue()
            if self._overwrite_filter is None
            else _IcebergExpressionVisitor().visit(self._overwrite_filter)
        )
        keep = (
            None if where == AlwaysTrue() else _expression_to_complementary_pyarrow(bind(schema, where, True), schema)
        )
        with txn.update_snapshot(snapshot_properties=self._snapshot_properties).overwrite() as snapshot:
            counter = itertools.count(0)
            for task in txn._scan(row_filter=where).plan_files():
                snapshot.delete_data_file(task.file)
                if keep is None:
                    continue
                scan = ArrowScan(
                    table_metadata=metadata, io=txn._table.io, projected_schema=schema, row_filter=AlwaysTrue()
                )
                kept = scan.to_table(tasks=[task]).filter(keep)
                if kept.num_rows:
                    for data_file in _dataframe_to_data_files(
                        io=txn._table.io,
                        df=kept,
                        table_metadata=metadata,
                        write_uuid=snapshot.commit_uuid,
                        counter=counter,
                    ):
                        snapshot.append_data_file(data_file)
            for data_file in data_files:
                snapshot.append_data_file(data_file)
        self._with_retry(txn.commit_transaction, description=f"commit overwrite of {self.table_identifier}")
