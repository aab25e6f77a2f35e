"""The catalog: the single source of truth for tables, snapshots, tags and schema evolution.

A thin layer over pyiceberg. It owns table identities (``ns.table``), creates tables from the schemas in
``catalog.schemas``, appends idempotently (rows whose ``(input_digest, record_key)`` is already there are not
written again), retries commits that lose a race, and resolves ``--as-of`` specs to snapshots.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.expressions import In
from pyiceberg.table import Table, TableProperties

from catalog.datafiles import DataFileWriter, conform
from catalog.schemas import KEY_COLUMNS, KIND_PROPERTY, schema_for
from core.errors import UsageError
from core.locks import first_use_lock

if TYPE_CHECKING:
    from pyiceberg.manifest import DataFile

# the whole name (fullmatch: ``$`` alone lets a trailing newline through); ASCII only, so no path separators,
# quotes, dots beyond the one, URIs or look-alike letters reach the catalog or the warehouse paths built from it
IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\.[A-Za-z_][A-Za-z0-9_]{0,127}")
COMMIT_ATTEMPTS = 8
# pyiceberg retries a commit that lost a race by re-applying the same append onto the rival's snapshot, past the
# key check that decided what to add (two writers of one input would both land it): keyed tables turn that off,
# and ``append`` / ``append_files`` retry themselves, re-checking keys each time
NO_BLIND_RETRY = {TableProperties.COMMIT_NUM_RETRIES: "0"}


@dataclass(frozen=True)
class SnapshotInfo:
    snapshot_id: int
    timestamp: str
    operation: str
    summary: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "timestamp": self.timestamp,
            "operation": self.operation,
            "summary": self.summary,
        }


@dataclass(frozen=True)
class AppendResult:
    offered: int
    written: int
    snapshot_id: int | None


def parse_identifier(identifier: str) -> tuple[str, str]:
    if not isinstance(identifier, str) or not IDENT_RE.fullmatch(identifier):
        raise UsageError(f"table name {identifier!r} must look like NS.TABLE (letters, digits, underscores)")
    namespace, name = identifier.split(".", 1)
    return namespace, name


def _ms_to_iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


class Lakehouse:
    """Open once per process; every table operation of llm-lake goes through here."""

    def __init__(self, catalog_kwargs: dict[str, str], name: str = "lake") -> None:
        self.catalog_kwargs = dict(catalog_kwargs)
        self.name = name
        self._catalog: Catalog | None = None

    @classmethod
    def from_config(cls, cfg) -> Lakehouse:  # cfg: core.config.LakeConfig (kept untyped to avoid a cycle)
        if cfg.is_embedded_catalog:
            cfg.home.mkdir(parents=True, exist_ok=True)
            (cfg.home / "warehouse").mkdir(parents=True, exist_ok=True)
        return cls(cfg.catalog_kwargs(), name=cfg.catalog_name)

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            with first_use_lock(self.catalog_kwargs.get("uri", "")):
                self._catalog = load_catalog(self.name, **self.catalog_kwargs)
        return self._catalog

    # ---- identities ---------------------------------------------------------------------------------------
    def list_tables(self) -> list[str]:
        names: list[str] = []
        for ns in self.catalog.list_namespaces():
            for ident in self.catalog.list_tables(ns):
                names.append(".".join(ident))
        return sorted(names)

    def exists(self, identifier: str) -> bool:
        parse_identifier(identifier)
        return self.catalog.table_exists(identifier)

    def table(self, identifier: str) -> Table:
        parse_identifier(identifier)
        try:
            return self.catalog.load_table(identifier)
        except NoSuchTableError:
            known = ", ".join(self.list_tables()) or "none yet"
            raise UsageError(f"unknown table {identifier}; known tables: {known}") from None

    def kind_of(self, identifier: str) -> str | None:
        return self.table(identifier).properties.get(KIND_PROPERTY)

    def ensure_table(self, identifier: str, kind: str) -> Table:
        """Create ``identifier`` with the schema of ``kind`` unless it exists; refuse a kind mismatch."""
        namespace, _ = parse_identifier(identifier)
        if self.catalog.table_exists(identifier):
            table = self.catalog.load_table(identifier)
            existing = table.properties.get(KIND_PROPERTY)
            if existing and existing != kind:
                raise UsageError(f"table {identifier} holds {existing!r} rows, not {kind!r}")
            return table
        try:
            self.catalog.create_namespace(namespace)
        except NamespaceAlreadyExistsError:
            pass
        try:
            return self.catalog.create_table(
                identifier, schema=schema_for(kind), properties={KIND_PROPERTY: kind, **NO_BLIND_RETRY}
            )
        except TableAlreadyExistsError:  # another process created it between our check and our create
            return self.catalog.load_table(identifier)

    # ---- writes -------------------------------------------------------------------------------------------
    def append(
        self,
        identifier: str,
        rows: pa.Table,
        snapshot_properties: dict[str, str] | None = None,
        idempotent: bool = True,
    ) -> AppendResult:
        """Append ``rows``; with ``idempotent``, rows whose key is already in the table are skipped.

        A commit that loses a race (another writer committed first) is retried against the refreshed table,
        re-checking keys each time, so concurrent writers all land and none duplicates another's rows.
        """
        offered = rows.num_rows
        for attempt in range(COMMIT_ATTEMPTS):
            table = self._keyed_table(identifier)
            todo = self._new_rows(table, rows) if idempotent else rows
            if todo.num_rows == 0:
                return AppendResult(offered, 0, None)
            todo = conform(
                todo.select([c for c in todo.column_names if c in table.schema().column_names]),
                table.schema().as_arrow(),
            )
            try:
                table.append(todo, snapshot_properties=snapshot_properties or {})
                current = table.current_snapshot()
                return AppendResult(offered, todo.num_rows, current.snapshot_id if current else None)
            except CommitFailedException:
                if attempt == COMMIT_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def file_writer(self, identifier: str) -> DataFileWriter:
        """A picklable writer of data files for the table's current schema (see ``catalog.datafiles``)."""
        table = self.table(identifier)
        return DataFileWriter(identifier, table.metadata, table.io)

    def append_files(
        self,
        identifier: str,
        files: dict[str, list[DataFile]],
        snapshot_properties: dict[str, str] | None = None,
    ) -> AppendResult:
        """Commit data files written elsewhere (``file_writer``) in one fast-append snapshot.

        ``files`` maps an input digest to the files holding that input's rows (a file holds one input's rows).
        An input that already has rows in the table is left out whole: its rows were committed atomically by
        an earlier run that crashed before recording itself, so a re-run adds nothing twice. A commit that loses
        a race is retried against the refreshed table, re-checking inputs each time.
        """
        offered = sum(f.record_count for group in files.values() for f in group)
        for attempt in range(COMMIT_ATTEMPTS):
            table = self._keyed_table(identifier)
            present = self._inputs_present(table, list(files))
            todo = [f for digest, group in files.items() if digest not in present for f in group]
            if not todo:
                return AppendResult(offered, 0, None)
            try:
                with table.transaction() as txn:
                    with txn.update_snapshot(snapshot_properties=snapshot_properties or {}).fast_append() as append:
                        for data_file in todo:
                            append.append_data_file(data_file)
                current = table.current_snapshot()
                return AppendResult(
                    offered, sum(f.record_count for f in todo), current.snapshot_id if current else None
                )
            except CommitFailedException:
                if attempt == COMMIT_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def _keyed_table(self, identifier: str) -> Table:
        """The table, with pyiceberg's blind commit retry off (``NO_BLIND_RETRY``; tables made before it was set
        get it on their first keyed write)."""
        table = self.table(identifier)
        if all(table.properties.get(k) == v for k, v in NO_BLIND_RETRY.items()):
            return table
        try:
            with table.transaction() as txn:
                txn.set_properties(NO_BLIND_RETRY)
        except CommitFailedException:
            pass  # another writer committed first (perhaps this very property): the caller's loop re-checks
        return self.table(identifier)

    @staticmethod
    def _inputs_present(table: Table, digests: list[str]) -> set[str]:
        """Which of ``digests`` have rows in the current snapshot (streamed: memory does not grow with rows)."""
        if table.current_snapshot() is None or not digests:
            return set()
        present: set[str] = set()
        scan = table.scan(row_filter=In("input_digest", digests), selected_fields=("input_digest",))
        for batch in scan.to_arrow_batch_reader():
            present.update(pc.unique(batch.column(0)).to_pylist())
        return present

    def _new_rows(self, table: Table, rows: pa.Table) -> pa.Table:
        if rows.num_rows == 0 or table.current_snapshot() is None:
            return _unique_keys(rows)
        digests = pc.unique(rows["input_digest"]).to_pylist()
        existing = table.scan(
            row_filter=In("input_digest", [d for d in digests if d is not None]),
            selected_fields=KEY_COLUMNS,
        ).to_arrow()
        rows = _unique_keys(rows)
        if existing.num_rows == 0:
            return rows
        seen = _row_keys(existing)
        return rows.filter(pc.invert(pc.is_in(_row_keys(rows), value_set=seen)))

    def add_columns(self, identifier: str, fields: Iterable[pa.Field]) -> Table:
        """Schema evolution: add new (nullable) columns; existing data files are not rewritten."""
        fields = list(fields)
        for attempt in range(COMMIT_ATTEMPTS):
            table = self.table(identifier)
            present = set(table.schema().column_names)
            new = [f for f in fields if f.name not in present]
            if not new:
                return table
            try:
                with table.update_schema() as update:
                    for f in new:
                        update.union_by_name(pa.schema([f]))
                return self.table(identifier)
            except CommitFailedException:  # another writer evolved the schema first: re-read, re-check, retry
                if attempt == COMMIT_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    # ---- snapshots, tags, time travel ---------------------------------------------------------------------
    def snapshots(self, identifier: str) -> list[SnapshotInfo]:
        table = self.table(identifier)
        out = []
        for snap in sorted(table.snapshots(), key=lambda s: (s.timestamp_ms, s.sequence_number or 0)):
            summary = dict(snap.summary.additional_properties) if snap.summary else {}
            operation = snap.summary.operation.value if snap.summary else "unknown"
            out.append(SnapshotInfo(snap.snapshot_id, _ms_to_iso(snap.timestamp_ms), operation, summary))
        return out

    def tag(self, identifier: str, name: str, snapshot_id: int | None = None) -> int:
        table = self.table(identifier)
        if snapshot_id is None:
            current = table.current_snapshot()
            if current is None:
                raise UsageError(f"table {identifier} has no snapshot to tag yet")
            snapshot_id = current.snapshot_id
        elif table.snapshot_by_id(snapshot_id) is None:
            raise UsageError(f"table {identifier} has no snapshot {snapshot_id}")
        existing = table.refs().get(name)
        if existing is not None and existing.snapshot_ref_type.value == "branch":
            raise UsageError(f"{name!r} is a branch of {identifier}, not a tag")
        with table.manage_snapshots() as manage:
            if existing is not None:
                manage.remove_tag(name)
            manage.create_tag(snapshot_id, name)
        return snapshot_id

    def tags(self, identifier: str) -> dict[str, int]:
        refs = self.table(identifier).refs()
        return {n: r.snapshot_id for n, r in refs.items() if r.snapshot_ref_type.value == "tag"}

    def resolve_snapshot(self, identifier: str, as_of: str | int | None) -> int | None:
        """Snapshot id for ``as_of``: a snapshot id, a tag or branch name, or an ISO-8601 timestamp.

        ``None`` means the current snapshot (``None`` too when the table is still empty).
        """
        return self._resolve(self.table(identifier), identifier, as_of)

    @staticmethod
    def _resolve(table: Table, identifier: str, as_of: str | int | None) -> int | None:
        """``resolve_snapshot`` on an already loaded table: a reader that loaded the table twice could resolve a
        snapshot committed in between that its first load does not know."""
        if as_of is None:
            current = table.current_snapshot()
            return current.snapshot_id if current else None
        text = str(as_of).strip()
        if text.isdigit():
            if table.snapshot_by_id(int(text)) is None:
                raise UsageError(f"table {identifier} has no snapshot {text}")
            return int(text)
        ref = table.snapshot_by_name(text)
        if ref is not None:
            return ref.snapshot_id
        when = parse_timestamp(text)
        if when is None:
            raise UsageError(f"--as-of {text!r} is neither a snapshot id, a tag of {identifier}, nor a timestamp")
        snap = table.snapshot_as_of_timestamp(int(when.timestamp() * 1000))
        if snap is None:
            raise UsageError(f"table {identifier} has no snapshot at or before {when.isoformat()}")
        return snap.snapshot_id

    def read(self, identifier: str, as_of: str | int | None = None, columns: tuple[str, ...] = ("*",)) -> pa.Table:
        table = self.table(identifier)
        snapshot_id = self._resolve(table, identifier, as_of)
        if snapshot_id is None:
            return table.schema().as_arrow().empty_table()
        return table.scan(snapshot_id=snapshot_id, selected_fields=columns).to_arrow()

    def count_inputs(self, identifier: str, digests: list[str]) -> int:
        """Rows of the current snapshot that came from the inputs with these ``input_digest`` values."""
        table = self.table(identifier)
        if table.current_snapshot() is None or not digests:
            return 0
        scan = table.scan(row_filter=In("input_digest", digests), selected_fields=("input_digest",))
        return sum(batch.num_rows for batch in scan.to_arrow_batch_reader())

    def count(self, identifier: str, as_of: str | int | None = None) -> int:
        table = self.table(identifier)
        snapshot_id = self._resolve(table, identifier, as_of)
        if snapshot_id is None:
            return 0
        summary = table.snapshot_by_id(snapshot_id).summary
        if summary is not None and summary.get("total-records") is not None:
            return int(summary["total-records"])
        return table.scan(snapshot_id=snapshot_id, selected_fields=KEY_COLUMNS[:1]).to_arrow().num_rows


def parse_timestamp(text: str) -> datetime | None:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _unique_keys(rows: pa.Table) -> pa.Table:
    """Keep the first row of each (input_digest, record_key): one input must not duplicate itself."""
    if rows.num_rows == 0:
        return rows
    keys = _row_keys(rows)
    if pc.count_distinct(keys).as_py() == rows.num_rows:
        return rows
    first = pa.table({"k": keys, "i": pa.array(range(rows.num_rows))}).group_by("k").aggregate([("i", "min")])
    return rows.take(pc.sort_indices(first["i_min"]))


def _row_keys(rows: pa.Table) -> pa.ChunkedArray:
    """One string per row joining its key columns (nulls count as empty)."""
    parts = [pc.fill_null(rows[c].cast(pa.large_string()), "") for c in KEY_COLUMNS]
    return pc.binary_join_element_wise(*parts, pa.scalar("\x1f", pa.large_string()))
