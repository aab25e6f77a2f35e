"""``lake label``: run one labeler over a table's documents on Ray Data and store its labels as an attribute table.

The run: pin the source snapshot; skip everything when the labeler (same version) already covers it; otherwise
read only the documents without a label (the data files added since the covered snapshot, minus ids already
labelled), label them in an actor pool (a model loads once per actor; a GPU per actor when the labeler asks for
one), gather the narrow result (``doc_id`` + label columns, a few bytes per document, never the text), let the
labeler finish it (e.g. percentile buckets over the whole corpus), and commit it once to ``NS.TABLE__LABELER``.
The documents table gets no new snapshot. A progress bar counts documents; the run ends with a one-line
summary, a ``lake.runs`` row and an MLflow run with the labeler's histogram.
"""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from catalog import attributes
from catalog.attributes import read_parquet_columns
from catalog.runs import record_run, unrecorded_snapshot
from catalog.store import Lakehouse
from core.config import LakeConfig
from core.errors import UsageError
from operators.base import Operator


class Labeler:
    """What ``run_labeler`` needs from a labeler: an operator plus how its output is stored and shown."""

    name: str = ""  # the attribute table suffix: NS.TABLE__<name>
    version: str = ""  # a new version relabels every document
    operator: Operator
    optional_columns: tuple[str, ...] = ()  # read when the table has them (e.g. lang for per-language buckets)

    def finish(self, rows: pa.Table, previous: dict[str, str]) -> tuple[pa.Table, dict[str, Any]]:
        """The gathered labels of this run (``doc_id`` + operator outputs) -> the rows to store, and stats.

        ``previous`` holds the properties of the attribute table (e.g. cut-offs fixed by an earlier run).
        """
        return rows, {}

    def figure(self, rows: pa.Table, stats: dict[str, Any]):  # a matplotlib Figure for MLflow, or None
        return None

    def stored_fields(self) -> list[pa.Field]:
        return [pa.field(n, t) for n, t in self.operator.output_columns.items()]

    def properties(self) -> dict[str, str]:
        """Table properties to keep on the attribute table (e.g. cut-offs later runs must reuse)."""
        return {}

    def artifacts(self) -> dict[str, str]:
        """Text files to log with the MLflow run (name -> content)."""
        return {}


@dataclass
class LabelReport:
    table: str
    labeler: str
    version: str
    attribute_table: str
    source_snapshot: int
    labelled: int = 0
    already_labelled: int = 0
    replaced: bool = False
    up_to_date: bool = False
    executor: str = ""
    seconds: float = 0.0
    snapshot_id: int | None = None
    run_id: str = ""
    mlflow_run_id: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # setup, label, store, track

    def summary(self) -> str:
        if self.up_to_date:
            return f"{self.attribute_table} already covers {self.table}@{self.source_snapshot}: nothing to label"
        rate = self.labelled / self.seconds if self.seconds else 0.0
        return (
            f"{self.labelled} documents of {self.table}@{self.source_snapshot} labelled by {self.labeler} "
            f"in {self.seconds:.1f}s ({rate:.0f} docs/s) -> {self.attribute_table}"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_unlabelled(
    files: pa.Table, columns: list[str], done: pa.Array | None, batch_rows: int = 1024
) -> Iterator[pa.Table]:
    """Ray Data stage: the planned data files' rows (``columns`` only) whose ``doc_id`` has no label yet."""
    for path in files["path"].to_pylist():
        table = read_parquet_columns(path, columns)
        for batch in table.to_batches(max_chunksize=batch_rows):
            rows = pa.Table.from_batches([batch])
            if done is not None and len(done):
                rows = rows.filter(pc.invert(pc.is_in(rows[attributes.KEY], value_set=done)))
            if rows.num_rows:
                yield rows


class ApplyOperator:
    """Ray Data actor: one operator instance (its model loaded once) applied batch after batch."""

    def __init__(self, operator: Operator, keep: list[str]) -> None:
        self.operator = operator
        self.keep = keep

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.operator(batch).select(self.keep)


LOCAL_MAX_ROWS = 100_000  # auto: below this, and with no cluster configured, label in this process
EXECUTORS = ("auto", "local", "ray")


def choose_executor(cfg: LakeConfig, rows: int, executor: str) -> str:
    """``local`` runs the operator in this process (no Ray start-up, no actor spin-up: what a small table or a
    notebook wants); ``ray`` runs the actor pool (a cluster, a GPU, a big table). ``auto`` picks ``ray`` whenever a
    cluster is configured (``RAY_ADDRESS``) or the table is big."""
    if executor not in EXECUTORS:
        raise UsageError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor != "auto":
        return executor
    return "ray" if cfg.ray_address or rows > LOCAL_MAX_ROWS else "local"


def label_locally(files: list[str], columns: list[str], done: pa.Array | None, operator: Operator, keep: list[str]):
    """The same stages as the Ray path, in this process: read the unlabelled rows, apply the operator."""
    for rows in read_unlabelled(pa.table({"path": files}), columns, done, batch_rows=operator.resources.batch_size):
        yield operator(rows).select(keep)


def plan_new_files(lake: Lakehouse, source: str, snapshot_id: int, covered: int | None) -> list[str]:
    """Data files of the snapshot, less those the covered snapshot already had (an appended crawl batch is new
    files; a rewritten table lists all of its files again, and the id filter then skips labelled rows)."""
    table = lake.table(source)
    files = {t.file.file_path for t in table.scan(snapshot_id=snapshot_id).plan_files()}
    if covered is not None and table.snapshot_by_id(covered) is not None:
        files -= {t.file.file_path for t in table.scan(snapshot_id=covered).plan_files()}
    return sorted(files)


def run_labeler(
    lake: Lakehouse,
    cfg: LakeConfig,
    source: str,
    labeler: Labeler,
    *,
    progress: bool = True,
    mlflow: bool = True,
    num_actors: int | None = None,
    executor: str = "auto",
    extra_params: dict[str, Any] | None = None,
) -> LabelReport:
    import ray
    from tqdm import tqdm

    from pipelines.ray_env import init_ray

    started_at = datetime.now(UTC)
    t0 = time.perf_counter()
    base = lake.resolve_snapshot(source, None)
    if base is None:
        raise UsageError(f"{source} is empty: nothing to label")
    schema = lake.table(source).schema().as_arrow()
    needed = [attributes.KEY, *labeler.operator.input_columns]
    missing = [c for c in needed if c not in schema.names]
    if missing:
        raise UsageError(f"{source} has no {', '.join(missing)} column(s) for the {labeler.name} labeler")
    columns = list(dict.fromkeys(needed + [c for c in labeler.optional_columns if c in schema.names]))
    ident = attributes.attribute_table(source, labeler.name)
    report = LabelReport(source, labeler.name, labeler.version, ident, base, run_id=uuid.uuid4().hex)

    state = attributes.label_state(lake, source, labeler.name)
    if state.version == labeler.version and state.source_snapshot == base:
        report.up_to_date = True
        report.snapshot_id = state.snapshot_id
        if unrecorded_snapshot(lake, ident) is not None:  # left by a run killed after its commit: vouch for it
            _record(lake, report, labeler, started_at)
        return report
    report.replaced = state.version != labeler.version
    attributes.ensure_attribute_table(lake, source, labeler.name, labeler.stored_fields(), labeler.version)
    done = None if report.replaced else attributes.labelled_ids(lake, source, labeler.name)
    report.already_labelled = 0 if done is None else len(done)
    files = plan_new_files(lake, source, base, None if report.replaced else state.source_snapshot)
    total = max(0, lake.count(source, base) - report.already_labelled)
    report.executor = choose_executor(cfg, total, executor)
    keep = [attributes.KEY, *labeler.operator.output_columns]
    keep += [c for c in labeler.optional_columns if c in columns and c not in keep]

    parts: list[pa.Table] = []
    report.stage_seconds["setup"] = round(time.perf_counter() - t0, 3)
    bar = tqdm(total=total, desc=f"label {labeler.name} {source}", unit="doc", disable=not progress)
    if files and report.executor == "local":
        for batch in label_locally(files, columns, done, labeler.operator, keep):
            parts.append(batch)
            bar.update(batch.num_rows)
    elif files:
        init_ray(cfg)
        cpus = max(1, int(ray.available_resources().get("CPU", 1)))
        res = labeler.operator.resources
        gpus = ray.cluster_resources().get("GPU", 0) if res.num_gpus else 0
        actors = num_actors or max(1, min(len(files) * 4, int(cpus // max(res.num_cpus, 0.25))))
        if gpus:
            actors = min(actors, max(1, int(gpus // res.num_gpus)))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            ds = ray.data.from_items([{"path": p} for p in files], override_num_blocks=len(files))
            ds = ds.map_batches(
                read_unlabelled,
                fn_kwargs={"columns": columns, "done": done},
                batch_format="pyarrow",
                batch_size=1,
                num_cpus=0,  # reading is light; the labeler's actors hold every CPU (a share here would wait)
            )
            ds = ds.map_batches(
                ApplyOperator,
                fn_constructor_kwargs={"operator": labeler.operator, "keep": keep},
                batch_format="pyarrow",
                batch_size=res.batch_size,
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=res.num_cpus,
                num_gpus=res.num_gpus if gpus else 0,
                max_restarts=0,  # a dead actor fails the run (nothing committed); the re-run starts over
            )
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            parts.append(batch)
            bar.update(batch.num_rows)
    bar.close()
    report.stage_seconds["label"] = round(time.perf_counter() - t0 - report.stage_seconds["setup"], 3)
    labelled = pa.concat_tables(parts) if parts else _empty(labeler)
    previous = dict(lake.table(ident).properties)
    rows, report.stats = labeler.finish(labelled, previous)
    report.labelled = rows.num_rows
    store = [attributes.KEY, *[f.name for f in labeler.stored_fields()]]
    report.snapshot_id = attributes.write_labels(
        lake,
        source,
        labeler.name,
        rows.select(store),
        version=labeler.version,
        source_snapshot=base,
        run_id=report.run_id,
        replace=report.replaced,
    )
    attributes.set_properties(lake, ident, labeler.properties())
    report.seconds = round(time.perf_counter() - t0, 3)
    report.stage_seconds["store"] = round(report.seconds - sum(report.stage_seconds.values()), 3)
    if mlflow:
        _track(cfg, report, labeler, rows, extra_params or {})
    report.stage_seconds["track"] = round(time.perf_counter() - t0 - report.seconds, 3)
    _record(lake, report, labeler, started_at)
    return report


def _record(lake: Lakehouse, report: LabelReport, labeler: Labeler, started_at: datetime) -> None:
    record_run(
        lake,
        command=f"label {labeler.name}",
        target_table=report.attribute_table,
        run_id=report.run_id,
        started_at=started_at,
        inputs=[],
        counts={k: v for k, v in report.as_dict().items() if k != "stats"} | {"stats": report.stats},
        snapshot_id=report.snapshot_id,
        mlflow_run_id=report.mlflow_run_id,
    )


def _empty(labeler: Labeler) -> pa.Table:
    outputs = [pa.field(n, t) for n, t in labeler.operator.output_columns.items()]
    return pa.schema([pa.field(attributes.KEY, pa.string()), *outputs]).empty_table()


def _track(cfg: LakeConfig, report: LabelReport, labeler: Labeler, rows: pa.Table, extra: dict[str, Any]) -> None:
    import mlflow

    from pipelines.tracking import log_png, start_run

    params = {
        "table": report.table,
        "labeler": report.labeler,
        "version": report.version,
        "source_snapshot": report.source_snapshot,
        "attribute_table": report.attribute_table,
        "replaced": report.replaced,
    } | extra
    with start_run(cfg, "label", run_name=f"label {report.labeler} {report.table}", params=params) as run:
        numeric = {k: v for k, v in report.stats.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        mlflow.log_metrics({"documents": report.labelled, "seconds": report.seconds} | numeric)
        mlflow.log_dict(report.as_dict(), "label_report.json")
        for name, text in labeler.artifacts().items():
            mlflow.log_text(text, name)
        fig = labeler.figure(rows, report.stats)
        if fig is not None:
            log_png(fig, f"{report.labeler}_histogram.png")
        report.mlflow_run_id = run.info.run_id
