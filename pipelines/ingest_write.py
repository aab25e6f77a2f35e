"""The write side of ``lake ingest``: workers turn labelled batches into data files and counts.

Each write task splits its batch into documents and rejects, writes each input's rows as Parquet data files of
the target tables (``catalog.datafiles``), and returns one small row per file group plus one row of counts.
The driver only gathers those rows and commits the files: no document text passes through it, so its memory
does not grow with the input.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from catalog.datafiles import DataFileWriter, pack
from operators.decide import INGEST_STAGE, StageCounts
from operators.recipe import Recipe

TIMING_PREFIX = "_seconds_"
# reader columns that are not kept on documents: the raw payload is reachable through source_uri + offset
DROP_FROM_DOCUMENTS = ("html", "reject_reason", "reject_detail", "reject_stage")
# columns of web.rejects beyond the "rejects" kind's schema
REJECT_EXTRA_FIELDS = [pa.field(name, pa.string()) for name in ("url", "doc_id", "source_uri")]
RESULT_SCHEMA = pa.schema(
    [
        ("what", pa.string()),  # documents | rejects | counts
        ("input_digest", pa.string()),
        ("rows", pa.int64()),
        ("payload", pa.binary()),  # packed DataFiles, or JSON counts
    ]
)


def document_fields(recipe: Recipe) -> list[pa.Field]:
    """The columns a document row can have: the reader's (minus the raw payload) and every operator's declared
    outputs. The table's schema is evolved to these before workers write, so every file has the same schema."""
    from operators.ingest import ROW_SCHEMA

    fields = {f.name: f for f in ROW_SCHEMA if f.name not in DROP_FROM_DOCUMENTS}
    for op in recipe.operators:
        for name, type_ in op.output_columns.items():
            fields.setdefault(name, pa.field(name, type_))  # a modifier keeps the type the column had
    return list(fields.values())


@dataclass(frozen=True)
class GroupWrites:
    """What a write task needs (pickled to it): writers for both tables and the values stamped on every row."""

    documents: DataFileWriter
    rejects: DataFileWriter
    run_id: str
    now: datetime


def write_batch(batch: pa.Table, writes: GroupWrites) -> pa.Table:
    """Ray Data map: a labelled batch -> data files of documents and rejects (one group per input) + counts."""
    is_kept = pc.is_null(batch["reject_stage"])
    kept, rejected = batch.filter(is_kept), batch.filter(pc.invert(is_kept))
    out: list[dict] = []
    for what, rows, writer in (
        ("documents", _documents(kept, writes), writes.documents),
        ("rejects", _rejects(rejected, writes), writes.rejects),
    ):
        for digest in pc.unique(rows["input_digest"]).to_pylist() if rows.num_rows else []:
            part = rows.filter(pc.equal(rows["input_digest"], digest))
            out.append(
                {"what": what, "input_digest": digest, "rows": part.num_rows, "payload": pack(writer.write(part))}
            )
    counts = batch_counts(batch, kept, rejected)
    out.append({"what": "counts", "input_digest": None, "rows": batch.num_rows, "payload": json.dumps(counts).encode()})
    return pa.Table.from_pylist(out, schema=RESULT_SCHEMA)


def batch_counts(batch: pa.Table, kept: pa.Table, rejected: pa.Table) -> dict:
    """The additive parts of the funnel for one batch (the driver sums them and builds ``StageCounts``)."""
    dropped: dict[str, dict[str, int]] = defaultdict(dict)
    if rejected.num_rows:
        pairs = pc.binary_join_element_wise(rejected["reject_stage"], rejected["reject_reason"], "\x1f")
        for item in pc.value_counts(pairs).to_pylist():
            stage, reason = item["values"].split("\x1f", 1)
            dropped[stage][reason] = item["counts"]
    seconds = {
        name[len(TIMING_PREFIX) :]: float(pc.sum(batch[name]).as_py() or 0.0)
        for name in batch.column_names
        if name.startswith(TIMING_PREFIX)
    }
    return {
        "records": batch.num_rows,
        "kept": kept.num_rows,
        "rejected": rejected.num_rows,
        "dropped": dropped,
        "seconds": seconds,
        "reasons": value_counts(rejected, "reject_reason"),
        "languages": value_counts(kept, "lang"),
    }


@dataclass
class GroupCounts:
    """Sums of ``batch_counts`` over a commit group."""

    records: int = 0
    kept: int = 0
    rejected: int = 0
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    languages: dict[str, int] = field(default_factory=dict)

    def add(self, counts: dict) -> None:
        self.records += counts["records"]
        self.kept += counts["kept"]
        self.rejected += counts["rejected"]
        for stage, reasons in counts["dropped"].items():
            add_counts(self.dropped.setdefault(stage, {}), reasons)
        add_counts(self.seconds, counts["seconds"])
        add_counts(self.reasons, counts["reasons"])
        add_counts(self.languages, counts["languages"])

    def funnel(self, recipe: Recipe) -> dict[str, StageCounts]:
        """Rows in / kept / dropped per reason / seconds for the reader and each operator stage, in order (a
        stage that is no step, a custom filter stage, comes last)."""
        stages = [INGEST_STAGE] + [op.name for op in recipe.operators]
        stages += [s for s in self.dropped if s not in stages]
        out, rows = {}, self.records
        for stage in stages:
            dropped = self.dropped.get(stage, {})
            gone = sum(dropped.values())
            out[stage] = StageCounts(rows, rows - gone, dict(dropped), float(self.seconds.get(stage, 0.0)))
            rows -= gone
        return out


@dataclass
class GroupFiles:
    """Data files the workers wrote for a commit group, per table and input digest."""

    by_input: dict[str, dict[str, list]] = field(default_factory=lambda: {"documents": {}, "rejects": {}})

    def add(self, what: str, digest: str, files: list) -> None:
        self.by_input[what].setdefault(digest, []).extend(files)

    def rows(self, what: str) -> int:
        return sum(f.record_count for files in self.by_input[what].values() for f in files)


def add_counts(into: dict, more: dict) -> None:
    for key, n in more.items():
        into[key] = into.get(key, 0) + n


def value_counts(table: pa.Table, column: str) -> dict[str, int]:
    if column not in table.column_names or table.num_rows == 0:
        return {}
    return {
        str(i["values"]): int(i["counts"])
        for i in pc.value_counts(table[column]).to_pylist()
        if i["values"] is not None
    }


def _documents(kept: pa.Table, writes: GroupWrites) -> pa.Table:
    drop = [c for c in kept.column_names if c.startswith(TIMING_PREFIX) or c in DROP_FROM_DOCUMENTS]
    docs = kept.drop_columns(drop)
    docs = docs.append_column("run_id", pa.array([writes.run_id] * docs.num_rows, pa.string()))
    return docs.append_column("ingested_at", pa.array([writes.now] * docs.num_rows, pa.timestamp("us", tz="UTC")))


def _rejects(rejected: pa.Table, writes: GroupWrites) -> pa.Table:
    n = rejected.num_rows

    def col(name: str) -> pa.Array:
        return rejected[name] if name in rejected.column_names else pa.nulls(n, pa.string())

    return pa.table(
        {
            "stage": col("reject_stage"),
            "reason": col("reject_reason"),
            "detail": col("reject_detail"),
            "raw": col("url"),
            "source_offset": rejected["source_offset"],
            "input_uri": col("input_uri"),
            "input_digest": col("input_digest"),
            "record_key": col("record_key"),
            "ingested_at": pa.array([writes.now] * n, pa.timestamp("us", tz="UTC")),
            "run_id": pa.array([writes.run_id] * n, pa.string()),
            "url": col("url"),
            "doc_id": col("doc_id"),
            "source_uri": col("source_uri"),
            "target_table": pa.array([writes.documents.identifier] * n, pa.string()),
        }
    )
