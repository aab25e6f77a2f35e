"""``lake ingest``: raw web inputs → recipe operators on Ray Data → documents and rejects in the catalog.

Flow per group of inputs: Ray Data reads records (one task per input, streaming), an actor pool runs the
recipe's operators on pyarrow batches (stateful operators load their models and blocklists once per actor), the
recipe's decision step splits each batch into kept rows and rejects, write tasks put both into Parquet data files
of the two tables (``pipelines.ingest_write``, one input per file), and the driver, which sees only those files'
descriptions and the counts, commits them (one fast-append per table; an input already in a table is left out,
so a re-run after a crash between the two commits adds nothing twice) and then records the run in
``lake.runs``. Inputs a succeeded run already committed are skipped, so re-running resumes and never duplicates
rows. The driver's memory does not grow with the size of the input.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from catalog.datafiles import unpack
from catalog.runs import committed_inputs, record_run
from catalog.schemas import rejects_table_for
from catalog.store import Lakehouse, parse_identifier
from core.config import LakeConfig
from core.errors import LakeError, UsageError
from operators.base import RecipeError, Resources
from operators.decide import INGEST_STAGE, Decision, StageCounts
from operators.recipe import DEFAULT_RECIPE, Recipe, load_recipe
from pipelines.files import check_inputs, file_digest
from pipelines.ingest_write import (
    REJECT_EXTRA_FIELDS,
    TIMING_PREFIX,
    GroupCounts,
    GroupFiles,
    GroupWrites,
    add_counts,
    document_fields,
    write_batch,
)

INGEST_COMMAND = "ingest"
LINEAGE_COLUMNS = ("input_uri", "input_digest", "record_key")
BLOCK_BYTES = 2 * 1024 * 1024
# rows per write task: one data file per input of the batch (~10 MB of text at typical page sizes)
WRITE_ROWS = 4096


@dataclass(frozen=True)
class Input:
    uri: str
    digest: str
    kind: str
    urls_file: str | None = None


@dataclass
class IngestReport:
    table: str
    run_id: str
    records: int = 0
    documents: int = 0
    rejects: int = 0
    skipped_inputs: int = 0
    inputs: int = 0
    seconds: float = 0.0
    stages: dict[str, StageCounts] = field(default_factory=dict)
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    languages: dict[str, int] = field(default_factory=dict)
    snapshot_id: int | None = None
    mlflow_run_id: str | None = None

    def summary(self) -> str:
        line = (
            f"{self.records} records = {self.documents} documents + {self.rejects} rejects "
            f"from {self.inputs} input(s) in {self.seconds:.1f}s"
        )
        if self.skipped_inputs:
            line += f"; {self.skipped_inputs} input(s) already committed, skipped"
        return line

    def as_dict(self) -> dict:
        return {
            "table": self.table,
            "run_id": self.run_id,
            "records": self.records,
            "documents": self.documents,
            "rejects": self.rejects,
            "inputs": self.inputs,
            "skipped_inputs": self.skipped_inputs,
            "seconds": round(self.seconds, 3),
            "docs_per_s": round(self.records / self.seconds, 2) if self.seconds else None,
            "stages": {name: c.to_dict() for name, c in self.stages.items()},
            "rejects_by_reason": self.rejects_by_reason,
            "languages": self.languages,
            "snapshot_id": self.snapshot_id,
            "mlflow_run_id": self.mlflow_run_id,
        }


# ---- reading (runs inside Ray tasks) --------------------------------------------------------------------------
def read_input(item: dict) -> Iterator[dict]:
    """All records of one input as reader rows, with the lineage columns the catalog keys on."""
    from operators.ingest import iter_html_dir, iter_jsonl, iter_warc_records

    kind, uri, limit = item["kind"], item["uri"], item["max_payload_bytes"]
    if kind == "warc":
        rows = iter_warc_records(uri, limit)
    elif kind == "html":
        rows = iter_html_dir(uri, item.get("urls_file"), limit)
    else:
        rows = iter_jsonl(uri, limit)
    seen: set[str] = set()
    for row in rows:
        source = row.get("source_uri") or uri
        rel = source[len(uri) :].lstrip("/") if source.startswith(uri) else source
        row["input_uri"] = uri
        row["input_digest"] = item["digest"]
        key = f"{rel}@{row.get('source_offset')}" if rel else str(row.get("source_offset"))
        row["record_key"] = _unique_key(key, seen)
        yield row


def _unique_key(key: str, seen: set[str]) -> str:
    """``key``, or ``key#2``, ``#3``… when an earlier row of the input took it: the idempotent commit keeps one
    row per key, so two records sharing an offset (two records in one gzip member, a record and the unreadable
    bytes after it) would otherwise lose one silently."""
    unique, n = key, 1
    while unique in seen:
        n += 1
        unique = f"{key}#{n}"
    seen.add(unique)
    return unique


def read_inputs(items: pa.Table, rows_per_batch: int = 256) -> Iterator[pa.Table]:
    """Ray Data map: input descriptions -> batches of reader rows with one fixed schema (streamed per input)."""
    from operators.ingest import ROW_SCHEMA

    schema = ROW_SCHEMA
    for name in LINEAGE_COLUMNS:
        schema = schema.append(pa.field(name, pa.string()))
    timing = f"{TIMING_PREFIX}{INGEST_STAGE}"

    def emit(rows: list[dict], seconds: float) -> pa.Table:
        batch = pa.Table.from_pylist(rows, schema=schema)
        return batch.append_column(timing, pa.array([seconds / len(rows)] * len(rows), pa.float64()))

    buffer: list[dict] = []
    started = time.perf_counter()
    for item in items.to_pylist():
        for row in read_input(item):
            buffer.append(row)
            if len(buffer) >= rows_per_batch:
                yield emit(buffer, time.perf_counter() - started)
                buffer, started = [], time.perf_counter()
    if buffer:
        yield emit(buffer, time.perf_counter() - started)


class RecipeRunner:
    """Ray Data actor: the recipe's operators on a batch, then the decision columns and per-operator seconds."""

    def __init__(self, recipe_path: str) -> None:
        self.recipe = load_recipe(recipe_path)
        self.schedule = filter_schedule(self.recipe)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return run_recipe(self.recipe, batch, self.schedule)


def stage_resources(recipe: Recipe) -> Resources:
    """What the one actor-pool stage running every operator of the recipe asks of Ray: the operators are fused (a
    batch goes through all of them in one actor, the raw HTML never leaves it), so the stage takes the largest CPU
    and GPU need and the smallest batch any operator declares (extraction's 64 pages, so that one big input still
    spreads over every actor). It is an actor pool, so stateful operators load their models once per actor."""
    declared = [op.resources for op in recipe.operators]
    return Resources(
        num_cpus=max(r.num_cpus for r in declared),
        num_gpus=max(r.num_gpus for r in declared),
        batch_size=min(r.batch_size for r in declared),
        stateful=True,
    )


def filter_schedule(recipe: Recipe) -> dict[int, Decision]:
    """Hard filters applied as early as their columns exist: after step ``k`` (-1: before any operator).

    Filters keep their recipe order (the first that matches names the reason), so a filter runs once it and
    every filter listed before it can be evaluated. Labelling a row that a filter already dropped is wasted
    work: with the default recipe, quality and safety labels are computed only for rows in a kept language.
    """
    step_of = {INGEST_STAGE: -1} | {op.name: i for i, op in enumerate(recipe.operators)}
    last = len(recipe.operators) - 1
    filters = recipe.decision.hard_filters
    ready_after, latest = [], -1
    for hard_filter in filters:  # a stage that is no step (a custom name) waits until the end
        latest = max(latest, step_of.get(hard_filter.stage, last))
        ready_after.append(latest)
    schedule: dict[int, Decision] = {}
    for step in sorted(set(ready_after)):
        schedule[step] = Decision([f for f, ready in zip(filters, ready_after, strict=True) if ready == step])
    return schedule


def run_recipe(recipe: Recipe, batch: pa.Table, schedule: dict[int, Decision] | None = None) -> pa.Table:
    """Operators in order with each hard filter as early as it can run; rejected rows carry ``reject_*``.

    Each row gets its share of every operator's batch time in ``_seconds_<op>`` (sums give stage seconds).
    """
    schedule = filter_schedule(recipe) if schedule is None else schedule
    # rows the reader already rejected skip the operators (their payload is gone anyway)
    reader_ok = pc.is_null(batch["reject_reason"])
    live, rejected_parts = batch.filter(reader_ok), []
    _, reader_rejects = Decision([]).split(batch.filter(pc.invert(reader_ok)))
    rejected_parts.append(reader_rejects)
    timings = {}
    for step in range(-1, len(recipe.operators)):
        if step >= 0:
            op = recipe.operators[step]
            started = time.perf_counter()
            live = op(live) if live.num_rows else live
            timings[op.name] = time.perf_counter() - started
        if step in schedule and live.num_rows:
            live, dropped = schedule[step].split(live)
            rejected_parts.append(dropped)
    live = live.append_column("reject_stage", pa.nulls(live.num_rows, pa.string()))
    for column in ("reject_reason", "reject_detail"):
        live = live.set_column(live.column_names.index(column), column, pa.nulls(live.num_rows, pa.string()))
    out = pa.concat_tables([live, *(r for r in rejected_parts if r.num_rows)], promote_options="permissive")
    # the raw HTML stays reachable through source_uri + source_offset; shipping it back to the driver cost more
    # than any operator (hundreds of MB per thousand pages through the object store)
    out = out.drop_columns([c for c in ("html",) if c in out.column_names])
    per_row = max(out.num_rows, 1)
    for name, seconds in timings.items():
        out = out.append_column(f"{TIMING_PREFIX}{name}", pa.array([seconds / per_row] * out.num_rows, pa.float64()))
    return out


# ---- driver -------------------------------------------------------------------------------------------------
def resolve_inputs(kind: str, paths: list[str], urls_file: str | None) -> list[Input]:
    if kind == "html":
        if len(paths) != 1 or not Path(paths[0]).is_dir():
            raise UsageError("lake ingest html takes one directory of .html / .html.gz files")
        directory = str(Path(paths[0]).resolve())
        return [
            Input(
                directory,
                _directory_digest(Path(directory)),
                kind,
                str(Path(urls_file).resolve()) if urls_file else None,
            )
        ]
    return [Input(uri, file_digest(uri), kind) for uri in check_inputs(paths)]


def _directory_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def ingest(
    cfg: LakeConfig,
    lake: Lakehouse,
    kind: str,
    paths: list[str],
    table: str = "web.documents",
    recipe_path: str | None = None,
    urls_file: str | None = None,
    commit_every: int = 32,
    open_mlflow_run: Callable[[IngestReport], str] | None = None,
) -> IngestReport:
    """Ingest ``paths`` (WARC/WET files, one HTML directory, or JSONL files) into ``table``.

    ``open_mlflow_run`` is called once, before the first commit; the run id it returns is recorded in
    ``lake.runs``."""
    if kind not in ("warc", "html", "jsonl"):
        raise UsageError(f"unknown ingest kind {kind!r}; one of warc, html, jsonl")
    parse_identifier(table)
    recipe_file = str(Path(recipe_path).resolve()) if recipe_path else str(DEFAULT_RECIPE)
    if recipe_path and not Path(recipe_path).is_file():
        raise UsageError(f"no such recipe file: {recipe_path}")
    try:
        recipe = load_recipe(recipe_file)  # validate before any data is read
    except RecipeError as exc:
        raise UsageError(f"recipe {recipe_file}: {exc}") from None

    started_at = datetime.now(UTC)
    clock = time.perf_counter()
    inputs = resolve_inputs(kind, paths, urls_file)
    lake.ensure_table(table, "documents")
    rejects_table = rejects_table_for(table)
    lake.ensure_table(rejects_table, "rejects")
    done = committed_inputs(lake, table, INGEST_COMMAND)
    # one input per digest: two copies of the same bytes are one input (their rows would share keys)
    todo = list({i.digest: i for i in reversed(inputs) if i.digest not in done}.values())[::-1]
    report = IngestReport(
        table=table, run_id=uuid.uuid4().hex, inputs=len(inputs), skipped_inputs=len(inputs) - len(todo)
    )
    if todo:
        from pipelines.ray_env import init_ray

        init_ray(cfg)
    for group_index, start in enumerate(range(0, len(todo), commit_every)):
        group = todo[start : start + commit_every]
        _ingest_group(
            lake, recipe, recipe_file, group, group_index, table, rejects_table, report, started_at, open_mlflow_run
        )
    report.seconds = time.perf_counter() - clock
    report.snapshot_id = lake.resolve_snapshot(table, None)
    return report


def _ingest_group(
    lake: Lakehouse,
    recipe: Recipe,
    recipe_file: str,
    group: list[Input],
    group_index: int,
    table: str,
    rejects_table: str,
    report: IngestReport,
    started_at: datetime,
    open_mlflow_run: Callable[[IngestReport], str] | None,
) -> None:
    import ray

    # the schemas take every column a row can have before any worker writes a file with them
    lake.add_columns(table, document_fields(recipe))
    lake.add_columns(rejects_table, REJECT_EXTRA_FIELDS)
    writes = GroupWrites(lake.file_writer(table), lake.file_writer(rejects_table), report.run_id, datetime.now(UTC))
    resources = stage_resources(recipe)
    items = [
        {"uri": i.uri, "digest": i.digest, "kind": i.kind, "urls_file": i.urls_file}
        | {"max_payload_bytes": recipe.max_payload_bytes}
        for i in group
    ]
    cpus = max(1, int(ray.available_resources().get("CPU", 1) // max(resources.num_cpus, 1e-9)))
    # Small blocks, so that the records of one big input spread over every actor: a read task's output is
    # otherwise buffered into blocks of up to 128 MB, each of which one actor works through alone (a streaming
    # repartition instead needs a free CPU, and stalls while the actors hold them all). A dataset copies the
    # context when it is created, so setting it here affects only this one.
    context = ray.data.DataContext.get_current()
    saved_block_bytes, context.target_max_block_size = context.target_max_block_size, BLOCK_BYTES
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        dataset = (
            ray.data.from_items(items, override_num_blocks=len(items))
            # reading is light next to extraction; zero CPUs keeps it from fusing into (and serialising) the actors,
            # so one big input still feeds every actor
            # ...but a bounded number at once: zero-CPU tasks are otherwise all started together, one worker process
            # each (a group of many small inputs started more workers than the cores could boot, for minutes)
            .map_batches(
                read_inputs,
                batch_size=1,
                batch_format="pyarrow",
                num_cpus=0,
                compute=ray.data.TaskPoolStrategy(size=min(len(items), max(2, cpus))),  # more warns on few inputs
            )
            .map_batches(
                RecipeRunner,
                fn_constructor_kwargs={"recipe_path": recipe_file},
                batch_format="pyarrow",
                batch_size=resources.batch_size,
                # two actors from the start: a pool of one only grows after a backlog, and each new actor pays for
                # loading its models; bigger clusters grow the pool up to every CPU
                compute=ray.data.ActorPoolStrategy(min_size=min(2, cpus), max_size=cpus),
                num_cpus=resources.num_cpus,
                num_gpus=resources.num_gpus,
                # Ray Data restarts dead actors by default, and Ray logs an error per actor because the constructor
                # arguments sit in the object store; a dead actor fails the run instead (nothing is committed for the
                # group, and the re-run resumes). Ray 2.60 has no named parameter for it yet, hence the filter above.
                max_restarts=0,
            )
        )
    context.target_max_block_size = saved_block_bytes
    # workers write the data files; only their descriptions and the counts reach the driver
    dataset = dataset.map_batches(
        functools.partial(write_batch, writes=writes), batch_format="pyarrow", batch_size=WRITE_ROWS, num_cpus=0
    )
    counts, files = GroupCounts(), GroupFiles()
    for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
        for row in batch.to_pylist():
            if row["what"] == "counts":
                counts.add(json.loads(row["payload"]))
            else:
                files.add(row["what"], row["input_digest"], unpack(row["payload"]))
    if not counts.records:
        return
    # the nothing-lost invariant, checked every group: what the workers wrote is what they counted
    if (files.rows("documents"), files.rows("rejects")) != (counts.kept, counts.rejected) or (
        counts.kept + counts.rejected != counts.records
    ):
        raise LakeError(
            f"accounting error: {counts.records} records, {counts.kept} kept + {counts.rejected} rejected counted, "
            f"{files.rows('documents')} + {files.rows('rejects')} written"
        )
    group_counts = counts.funnel(recipe)

    if open_mlflow_run is not None and report.mlflow_run_id is None:
        report.mlflow_run_id = open_mlflow_run(report)
    properties = {"lake.run_id": report.run_id}
    doc_result = lake.append_files(table, files.by_input["documents"], snapshot_properties=properties)
    _fault_point("after_documents_commit")
    lake.append_files(rejects_table, files.by_input["rejects"], snapshot_properties=properties)
    digests = [i.digest for i in group]
    _check_landed(lake, table, digests, counts.kept)
    _check_landed(lake, rejects_table, digests, counts.rejected)

    report.records += counts.records
    report.documents += counts.kept
    report.rejects += counts.rejected
    for name, stage_counts in group_counts.items():
        report.stages[name] = report.stages.get(name, StageCounts()) + stage_counts
    add_counts(report.rejects_by_reason, counts.reasons)
    add_counts(report.languages, counts.languages)
    run_counts = {
        "records": counts.records,
        "documents": counts.kept,
        "rejects": counts.rejected,
        "new_documents": doc_result.written,
        "stages": {k: v.to_dict() for k, v in group_counts.items()},
    }
    record_run(
        lake,
        command=INGEST_COMMAND,
        target_table=table,
        run_id=report.run_id,
        started_at=started_at,
        inputs=[{"uri": i.uri, "digest": i.digest} for i in group],
        counts=run_counts,
        # a re-run after a crash adds no rows: it vouches for the snapshot the crashed run left
        snapshot_id=doc_result.snapshot_id or lake.resolve_snapshot(table, None),
        mlflow_run_id=report.mlflow_run_id,
        part=group_index,
    )


def _check_landed(lake: Lakehouse, table: str, digests: list[str], expected: int) -> None:
    """Counts printed = counts in ``lake.runs`` = rows in the tables: fail the run before recording it if the
    tables do not hold exactly the rows this group counted for its inputs."""
    landed = lake.count_inputs(table, digests)
    if landed != expected:
        raise LakeError(f"accounting error: {table} holds {landed} rows of this run's inputs, counted {expected}")


def _fault_point(name: str) -> None:
    """Crash on purpose where ``LAKE_FAULT`` says so: how the resume tests kill a run between two commits."""
    if os.environ.get("LAKE_FAULT") == name:
        raise RuntimeError(f"injected fault at {name}")
