"""Data files written by workers, committed by the driver: an Iceberg append whose rows never pass the driver.

A ``DataFileWriter`` is a picklable snapshot of one table's metadata and file IO. A Ray worker conforms its
rows to that schema and writes Parquet files (with Iceberg field ids and column statistics) into the table's
warehouse location; only the resulting ``DataFile`` descriptions travel back. ``Lakehouse.append_files`` then
commits them in one fast-append snapshot. Files written by a run that crashes before its commit stay
unreferenced (orphans, as in any Iceberg writer): readers never see them.
"""

from __future__ import annotations

import pickle
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from pyiceberg.io import FileIO
    from pyiceberg.manifest import DataFile
    from pyiceberg.table.metadata import TableMetadata


@dataclass(frozen=True)
class DataFileWriter:
    identifier: str
    metadata: TableMetadata
    io: FileIO

    @property
    def arrow_schema(self) -> pa.Schema:
        return self.metadata.schema().as_arrow()

    def write(self, rows: pa.Table) -> list[DataFile]:
        """Write ``rows`` (columns a subset of the table's) as data files of the table; nothing is committed."""
        from pyiceberg.io.pyarrow import _dataframe_to_data_files

        if rows.num_rows == 0:
            return []
        conformed = conform(rows, self.arrow_schema, self.identifier)
        return list(_dataframe_to_data_files(self.metadata, conformed, self.io, write_uuid=uuid.uuid4()))


def conform(rows: pa.Table, schema: pa.Schema, identifier: str = "table") -> pa.Table:
    """Order and cast ``rows`` to ``schema``; missing columns become nulls, unknown columns are an error (a
    writer must evolve the table's schema before it writes, or the column would be lost)."""
    unknown = [c for c in rows.column_names if c not in schema.names]
    if unknown:
        raise ValueError(f"columns {unknown} are not in the schema of {identifier}")
    columns = [
        rows[f.name].cast(f.type) if f.name in rows.column_names else pa.nulls(rows.num_rows, f.type) for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def pack(files: list[DataFile]) -> bytes:
    """DataFile descriptions as bytes, to travel in an Arrow column."""
    return pickle.dumps(files)


def unpack(blob: bytes) -> list[DataFile]:
    return pickle.loads(blob)
