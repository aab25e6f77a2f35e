"""Table kinds and their Arrow schemas: the one place that says what a row of each table is.

Every table the lake writes carries the lineage columns ``input_uri``, ``input_digest`` (sha256 of the input's
bytes) and ``record_key`` (the record's position or key inside that input); the pair (input_digest, record_key)
identifies a row, which is what makes appends idempotent. All fields are nullable on purpose: Ray's Iceberg
writer relaxes ``required`` to ``optional`` anyway (shared/notes/stack.md §2), so we never rely on it.
"""

from __future__ import annotations

import pyarrow as pa

KIND_PROPERTY = "lake.kind"
KEY_COLUMNS = ("input_digest", "record_key")

LINEAGE_FIELDS = [
    pa.field("input_uri", pa.string()),
    pa.field("input_digest", pa.string()),
    pa.field("record_key", pa.string()),
    pa.field("ingested_at", pa.timestamp("us", tz="UTC")),
    pa.field("run_id", pa.string()),
]

MESSAGE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])

KIND_FIELDS: dict[str, list[pa.Field]] = {
    # plain pretraining text (txt / jsonl / parquet corpora)
    "text": [
        pa.field("doc_id", pa.string()),
        pa.field("text", pa.string()),
        pa.field("title", pa.string()),
        pa.field("source_format", pa.string()),
    ],
    # web documents from the curation pipeline (labels are added later through schema evolution)
    "documents": [
        pa.field("doc_id", pa.string()),
        pa.field("url", pa.string()),
        pa.field("text", pa.string()),
        pa.field("title", pa.string()),
        pa.field("source_uri", pa.string()),
        pa.field("source_offset", pa.int64()),
        pa.field("fetch_time", pa.string()),
    ],
    # SFT examples: one conversation, roles normalised to system/user/assistant/function_call/observation
    "sft": [
        pa.field("example_id", pa.string()),
        pa.field("messages", pa.list_(MESSAGE)),
        pa.field("tools", pa.string()),
        pa.field("category", pa.string()),
        pa.field("source_format", pa.string()),
    ],
    # preference pairs: a shared prompt conversation and two competing final assistant turns
    "preference": [
        pa.field("pair_id", pa.string()),
        pa.field("prompt", pa.list_(MESSAGE)),
        pa.field("chosen", pa.string()),
        pa.field("rejected", pa.string()),
        pa.field("source_format", pa.string()),
    ],
    # multiple-choice items (CMMLU / C-Eval layout)
    "mc": [
        pa.field("item_id", pa.string()),
        pa.field("subject", pa.string()),
        pa.field("split", pa.string()),
        pa.field("question", pa.string()),
        pa.field("choices", pa.list_(pa.string())),
        pa.field("answer", pa.string()),
    ],
    # evaluation figures (lake eval): one row per model version, suite, subject and metric
    "eval_results": [
        pa.field("model", pa.string()),
        pa.field("version", pa.int64()),
        pa.field("suite", pa.string()),
        pa.field("subject", pa.string()),  # "*" for a suite's overall figure
        pa.field("metric", pa.string()),
        pa.field("value", pa.float64()),
        pa.field("n", pa.int64()),  # items, or the tokens/bytes/chars behind a ppl figure
        pa.field("method", pa.string()),
        pa.field("data_table", pa.string()),
        pa.field("data_snapshot_id", pa.int64()),
        pa.field("data_predicate", pa.string()),
        pa.field("options", pa.string()),  # JSON of the options that change the figures (shots, limit, ...)
    ],
    # every record that did not become a row, with the stage and the reason
    "rejects": [
        pa.field("stage", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("target_table", pa.string()),
        pa.field("raw", pa.string()),
        pa.field("source_offset", pa.int64()),
    ],
    # one row per pipeline or import run
    "runs": [
        pa.field("command", pa.string()),
        pa.field("target_table", pa.string()),
        pa.field("status", pa.string()),
        pa.field("started_at", pa.timestamp("us", tz="UTC")),
        pa.field("finished_at", pa.timestamp("us", tz="UTC")),
        pa.field("inputs", pa.list_(pa.struct([pa.field("uri", pa.string()), pa.field("digest", pa.string())]))),
        pa.field("counts", pa.string()),  # JSON: read / imported / rejected / per-stage counts
        pa.field("snapshot_id", pa.int64()),
        pa.field("mlflow_run_id", pa.string()),
        pa.field("error", pa.string()),
    ],
}

# Import KIND (CLI word) -> table kind
IMPORT_KINDS = {"text": "text", "sft": "sft", "preference": "preference", "mc": "mc"}

RUNS_TABLE = "lake.runs"


def schema_for(kind: str) -> pa.Schema:
    if kind not in KIND_FIELDS:
        raise KeyError(f"unknown table kind {kind!r}; known: {sorted(KIND_FIELDS)}")
    return pa.schema(KIND_FIELDS[kind] + LINEAGE_FIELDS)


def rejects_table_for(identifier: str) -> str:
    """Rejects of a table live beside it: ``ns.table`` -> ``ns.rejects``."""
    namespace = identifier.split(".", 1)[0]
    return f"{namespace}.rejects"
