"""Attribute tables: labels stored beside a table, keyed by ``doc_id``, never by rewriting the documents.

This is AllenAI Dolma's "attributes" design on Iceberg. Every labeler (``dedup``, ``ppl``, ``quality``…) owns one
narrow table per source table, ``NS.TABLE__LABELER``, holding its label columns and, per row, the labeler's
version, the source snapshot the row was computed on and the run that wrote it. A new label costs a few bytes per
document instead of a rewrite of every document's text.

- A labeler run records, on its commit, the labeler version and the source snapshot it covered
  (``lake.attr.version``, ``lake.attr.source_snapshot``). The same labeler on the same snapshot is a no-op; on a
  newer snapshot it labels the documents it has no row for; a new labeler version replaces the table.
- ``joined_frame`` joins a table with chosen attribute tables (left join on ``doc_id``: a document without a label
  reads null); ``lake query`` names the joined view ``NS.TABLE__labels``; training and mixes read through the
  same join (``attribute_sources`` plans the attribute files for Ray tasks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
from pyiceberg.table import Table

from catalog.rewrite import ensure_side_table, replace_rows
from catalog.store import Lakehouse, parse_identifier
from core.errors import UsageError

KIND = "attributes"
SEPARATOR = "__"
VIEW_SUFFIX = "__labels"
KEY = "doc_id"
ROW_KEYS = ("example_id", "pair_id", "item_id")  # tables of other rows than documents: their id is the key
LABELER_RE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")  # no "__": the separator stays unambiguous
PROP_SOURCE = "lake.attr.source"
PROP_LABELER = "lake.attr.labeler"
PROP_VERSION = "lake.attr.version"
PROP_SOURCE_SNAPSHOT = "lake.attr.source_snapshot"
META_FIELDS = [
    pa.field(KEY, pa.string()),
    pa.field("labeler", pa.string()),
    pa.field("labeler_version", pa.string()),
    pa.field("source_snapshot_id", pa.int64()),
    pa.field("run_id", pa.string()),
]
META_COLUMNS = tuple(f.name for f in META_FIELDS)


def attribute_table(source: str, labeler: str) -> str:
    parse_identifier(source)
    if not LABELER_RE.match(labeler) or labeler == VIEW_SUFFIX.strip("_"):
        raise UsageError(f"labeler name {labeler!r} must be lower-case letters, digits and single underscores")
    return f"{source}{SEPARATOR}{labeler}"


def view_name(source: str) -> str:
    return f"{source}{VIEW_SUFFIX}"


def attribute_tables(lake: Lakehouse, source: str, known: list[str] | None = None) -> dict[str, str]:
    """``{labeler: table}`` of the attribute tables of ``source`` (by name: ``NS.TABLE__LABELER``)."""
    known = lake.list_tables() if known is None else known
    prefix = f"{source}{SEPARATOR}"
    found = {}
    for name in known:
        if name.startswith(prefix):
            labeler = name[len(prefix) :]
            if LABELER_RE.match(labeler):
                found[labeler] = name
    return dict(sorted(found.items()))


def labelled_sources(known: list[str]) -> list[str]:
    """Tables that have at least one attribute table (and so a ``__labels`` view)."""
    known_set = set(known)
    sources = set()
    for name in known:
        base, sep, labeler = name.rpartition(SEPARATOR)
        if sep and base in known_set and LABELER_RE.match(labeler):
            sources.add(base)
    return sorted(sources)


def ensure_attribute_table(
    lake: Lakehouse, source: str, labeler: str, label_fields: list[pa.Field], version: str
) -> Table:
    """Create (or open) the attribute table of ``labeler`` on ``source``; new label columns evolve its schema."""
    ident = attribute_table(source, labeler)
    schema = pa.schema(META_FIELDS[:1] + list(label_fields) + META_FIELDS[1:])
    props = {PROP_SOURCE: source, PROP_LABELER: labeler}
    table = ensure_side_table(lake, ident, schema, KIND, props)
    missing = [f for f in label_fields if f.name not in table.schema().column_names]
    if missing:
        table = lake.add_columns(ident, missing)
    return table


@dataclass(frozen=True)
class LabelState:
    """What the attribute table's current snapshot covers."""

    version: str | None
    source_snapshot: int | None
    snapshot_id: int | None


def label_state(lake: Lakehouse, source: str, labeler: str) -> LabelState:
    ident = attribute_table(source, labeler)
    if not lake.exists(ident):
        return LabelState(None, None, None)
    snapshot = lake.table(ident).current_snapshot()
    if snapshot is None:
        return LabelState(None, None, None)
    props = snapshot.summary.additional_properties if snapshot.summary else {}
    source_snapshot = props.get(PROP_SOURCE_SNAPSHOT)
    return LabelState(props.get(PROP_VERSION), int(source_snapshot) if source_snapshot else None, snapshot.snapshot_id)


def commit_properties(version: str, source_snapshot: int, run_id: str) -> dict[str, str]:
    return {PROP_VERSION: version, PROP_SOURCE_SNAPSHOT: str(source_snapshot), "lake.run_id": run_id}


def write_labels(
    lake: Lakehouse,
    source: str,
    labeler: str,
    rows: pa.Table,
    *,
    version: str,
    source_snapshot: int,
    run_id: str,
    replace: bool,
) -> int | None:
    """Append (or, for a new labeler version, replace with) ``rows``: ``doc_id`` and label columns.

    One commit either way; it carries the version and the source snapshot the labels now cover. Returns the
    attribute table's new snapshot id.
    """
    ident = attribute_table(source, labeler)
    table = lake.table(ident)
    n = rows.num_rows
    meta = {
        "labeler": pa.array([labeler] * n, pa.string()),
        "labeler_version": pa.array([version] * n, pa.string()),
        "source_snapshot_id": pa.array([source_snapshot] * n, pa.int64()),
        "run_id": pa.array([run_id] * n, pa.string()),
    }
    for name, values in meta.items():
        rows = rows.append_column(name, values)
    schema = table.schema().as_arrow()
    rows = pa.Table.from_arrays(
        [rows[f.name].cast(f.type) if f.name in rows.column_names else pa.nulls(n, f.type) for f in schema],
        schema=schema,
    )
    props = commit_properties(version, source_snapshot, run_id)
    if replace:
        replace_rows(lake, ident, rows, props)
    else:
        table.append(rows, snapshot_properties=props)
    return lake.resolve_snapshot(ident, None)


def set_properties(lake: Lakehouse, ident: str, properties: dict[str, str]) -> None:
    table = lake.table(ident)
    stale = {k: v for k, v in properties.items() if table.properties.get(k) != v}
    if stale:
        with table.transaction() as txn:
            txn.set_properties(stale)


def labelled_ids(lake: Lakehouse, source: str, labeler: str) -> pa.Array:
    """The ``doc_id`` values the labeler's table already holds (one narrow column)."""
    ident = attribute_table(source, labeler)
    if not lake.exists(ident) or lake.resolve_snapshot(ident, None) is None:
        return pa.array([], pa.string())
    return lake.read(ident, columns=(KEY,))[KEY].combine_chunks()


def label_columns(lake: Lakehouse, ident: str) -> list[str]:
    return [c for c in lake.table(ident).schema().column_names if c not in META_COLUMNS]


def _scan(lake: Lakehouse, ident: str, snapshot_id: int | None) -> pl.LazyFrame:
    table = lake.table(ident)
    if snapshot_id is None:
        return pl.from_arrow(table.schema().as_arrow().empty_table()).lazy()
    return pl.scan_iceberg(table, snapshot_id=snapshot_id)


def joined_frame(
    lake: Lakehouse,
    source: str,
    labelers: list[str] | None = None,
    as_of: str | int | None = None,
    attribute_snapshots: dict[str, int | None] | None = None,
) -> pl.LazyFrame:
    """``source`` (at ``as_of``) left-joined on ``doc_id`` with the label columns of its attribute tables.

    ``labelers`` chooses which (default: all); ``attribute_snapshots`` pins them (default: their current
    snapshots: a label is a fact about a document, so older document snapshots read today's labels).
    """
    available = attribute_tables(lake, source)
    chosen = list(available) if labelers is None else labelers
    unknown = [name for name in chosen if name not in available]
    if unknown:
        have = ", ".join(available) or "none yet"
        raise UsageError(f"{source} has no {', '.join(unknown)} labels; labels: {have}")
    frame = _scan(lake, source, lake.resolve_snapshot(source, as_of))
    if not chosen:
        return frame
    present = set(frame.collect_schema().names())
    key = next((c for c in (KEY, *ROW_KEYS) if c in present), None)
    if key is None:
        raise UsageError(f"{source} has no {KEY} column to join labels on")
    for labeler in chosen:
        ident = available[labeler]
        pinned = (attribute_snapshots or {}).get(labeler, lake.resolve_snapshot(ident, None))
        columns = [c for c in label_columns(lake, ident) if c not in present]
        if not columns:
            continue
        labels = _scan(lake, ident, pinned).select([KEY, *columns]).unique(KEY, keep="last")
        frame = frame.join(labels, left_on=key, right_on=KEY, how="left")
        present.update(columns)
    return frame


@dataclass(frozen=True)
class AttributeFiles:
    """A pinned attribute table as Ray tasks read it: its Parquet files and the label columns to join."""

    labeler: str
    table: str
    snapshot_id: int
    files: tuple[str, ...]
    columns: tuple[str, ...]

    def lineage(self) -> dict:
        return {"table": self.table, "snapshot_id": self.snapshot_id}


def attribute_sources(lake: Lakehouse, source: str, exclude: set[str] | None = None) -> list[AttributeFiles]:
    """Every attribute table of ``source`` pinned at its current snapshot, with its planned files."""
    out = []
    taken = set(exclude or ())
    for labeler, ident in attribute_tables(lake, source).items():
        snapshot_id = lake.resolve_snapshot(ident, None)
        if snapshot_id is None:
            continue
        columns = tuple(c for c in label_columns(lake, ident) if c not in taken)
        taken.update(columns)
        tasks = list(lake.table(ident).scan(snapshot_id=snapshot_id).plan_files())
        files = tuple(sorted(t.file.file_path for t in tasks))
        out.append(AttributeFiles(labeler, ident, snapshot_id, files, columns))
    return out


_LOADED: dict[tuple[str, int], pl.DataFrame] = {}


def load_attribute_frame(attr: AttributeFiles) -> pl.DataFrame:
    """The attribute rows (``doc_id`` + label columns) from its files, cached per process (one Ray worker
    joins many document batches against the same narrow table)."""
    key = (attr.table, attr.snapshot_id)
    if key not in _LOADED:
        parts = [read_parquet_columns(path, [KEY, *attr.columns]) for path in attr.files]
        frame = pl.from_arrow(pa.concat_tables(parts, promote_options="permissive")) if parts else None
        if frame is None:
            frame = pl.DataFrame({KEY: []}, schema={KEY: pl.String})
        _LOADED[key] = frame.unique(KEY, keep="last")
    return _LOADED[key]


def read_parquet_columns(path: str, columns: list[str]) -> pa.Table:
    """Some columns of one data file (local path or URI); a column the file predates reads as nulls."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    filesystem, inner = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    with filesystem.open_input_file(inner) as handle:
        parquet = pq.ParquetFile(handle)
        have = [c for c in columns if c in parquet.schema_arrow.names]
        table = parquet.read(columns=have)
    for name in columns:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows))  # null type: promotes on concat
    return table.select(columns)


def join_attributes(batch: pl.DataFrame, attributes: list[AttributeFiles]) -> pl.DataFrame:
    """A batch of documents with the label columns of ``attributes`` (left join on ``doc_id``)."""
    for attr in attributes:
        if attr.columns:
            batch = batch.join(load_attribute_frame(attr), on=KEY, how="left")
    return batch
