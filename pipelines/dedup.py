"""``lake dedup``: exact and MinHash-LSH near-duplicate labels for a whole table, on Ray.

Stages (nothing of size N is collected on the driver; it holds object refs and counts):

1. **Signatures** (Ray Data ``map_batches`` of ``operators.dedup.MinHashSignature``) for the rows that have none
   yet: the rows whose ``doc_id`` the signature table does not hold, i.e. a crawl batch appended since the last
   run. They are appended to the side table ``NS.TABLE_minhash`` (node, signature, exact text and
   URL hashes), so old documents are never hashed again. Changing ``num_perm``/``ngram``/``tokenizer``/``seed``
   makes stored signatures incomparable: they are then recomputed for every row (and replaced).
2. **Buckets**: every signature row becomes one key per LSH band (plus one per exact-text hash and per URL hash).
   Only (bucket, node) travels: keys go to the ``GraphShard`` actor of ``bucket % num_shards``, signatures to the
   actor of their node. Each actor turns its multi-member buckets into unique candidate pairs (all pairs up to
   ``max_pair_bucket`` members, each member against the first ``max_pair_bucket`` beyond; exact/URL buckets are
   edges as they are); a pair goes to the owner of its first node, picks up that signature, then to the owner of
   its second node, which keeps it when the signature similarity reaches the threshold. No sort, no join.
3. **Connected components**, distributed: ``num_shards`` ``GraphShard`` actors each own the nodes ``node %
   num_shards``, with their edges. Rounds of min-label propagation along edges plus pointer jumping (``L[u] <-
   L[L[u]]``) exchange label arrays actor-to-actor (the driver passes object refs, never the arrays) until no
   label changes. Each component's label is its smallest node id.
4. **Keeper**: every row's keeper key (quality desc, then earliest ``fetch_time``, then ``doc_id``) goes to the
   shard of its node; members go to the shard of their component root, which picks the keeper and counts the
   members present in the table.
5. **Labels**: every row's ``dup_cluster_id`` (the keeper's ``doc_id``), ``dup_cluster_size`` and ``dup_keep``
   go to the attribute table ``NS.TABLE__dedup`` keyed by ``doc_id`` (``catalog.attributes``), one commit; the
   documents are not rewritten. Mixes and training filter on ``dup_keep`` through the joined view.

``scope="table"`` deduplicates new rows against everything already there (all stored signatures) and replaces
the labels of every row; ``"batch"`` only among the new rows, whose labels are appended while older rows keep
theirs. The same settings on the same snapshot are a no-op.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from catalog import attributes
from catalog.rewrite import append_dataset, ensure_side_table, replace_dataset
from catalog.runs import record_run, unrecorded_snapshot
from catalog.store import Lakehouse
from core.config import LakeConfig
from core.errors import UsageError
from operators.dedup import (
    TOKENIZERS,
    MinHashSignature,
    choose_bands,
    node_ids,
    signature_algorithm,
)
from operators.dedup_graph import (
    GraphShard,
    bucket_keys,
    connected_components,
    find_edges,
    resolve_keepers,
)
from operators.expressions import compile_sql
from pipelines.ray_env import init_ray

LABEL_FIELDS = [
    pa.field("dup_cluster_id", pa.string()),
    pa.field("dup_cluster_size", pa.int64()),
    pa.field("dup_keep", pa.bool_()),
]
SIG_SCHEMA = pa.schema(
    [
        pa.field("dup_node", pa.int64()),
        pa.field("doc_id", pa.string()),
        pa.field("dup_sig", pa.binary()),
        pa.field("dup_shingles", pa.int32()),
        pa.field("dup_text_hash", pa.int64()),
        pa.field("dup_url_hash", pa.int64()),
        pa.field("run_id", pa.string()),
    ]
)
SIG_KIND = "minhash_signatures"
LABELER = "dedup"
PARAM_PROPS = ("num_perm", "ngram", "tokenizer", "seed")
# what decides the labels (a change relabels every row); num_shards, batch sizes and mlflow do not
LABEL_PARAMS = PARAM_PROPS + ("threshold", "verify", "bands", "rows", "exact", "url", "quality",
                              "false_positive_weight", "false_negative_weight", "max_pair_bucket")  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class DedupConfig:
    """Everything that decides a dedup run; validated before any data is read."""

    threshold: float = 0.8  # Jaccard similarity of shingle sets above which two documents are duplicates
    ngram: int = 5  # shingle size in tokens (a CJK character is a token)
    num_perm: int = 128  # MinHash permutations
    tokenizer: str = "auto"  # auto (words; CJK characters), char, word
    seed: int = 42
    scope: str = "table"  # table: new rows against all; batch: new rows among themselves
    verify: bool = True  # verify LSH candidates by signature similarity >= threshold
    false_positive_weight: float = 0.1
    false_negative_weight: float = 0.9
    bands: int | None = None  # override datasketch's choice (with rows)
    rows: int | None = None
    exact: bool = True  # exact normalised-text duplicates
    url: bool = True  # same normalised URL
    quality: str | None = None  # column or SQL expression, higher is better; None: count of null *_reason columns
    text_column: str = "text"
    url_column: str = "url"
    fetch_time_column: str = "fetch_time"
    num_shards: int = 2  # connected-components actors
    batch_size: int = 512
    max_pair_bucket: int = 256  # buckets up to this size are verified all-pairs, larger ones against leaders
    max_rounds: int = 64
    mlflow: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1 (exclusive), got {self.threshold}")
        if self.ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {self.ngram}")
        if not 16 <= self.num_perm <= 1024:
            raise ValueError(f"num-perm must be between 16 and 1024, got {self.num_perm}")
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, got {self.tokenizer!r}")
        if self.scope not in ("table", "batch"):
            raise ValueError(f"scope must be 'table' or 'batch', got {self.scope!r}")
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num-perm {self.num_perm}")
        if self.num_shards < 1:
            raise ValueError("num_shards must be >= 1")

    @property
    def lsh(self) -> tuple[int, int]:
        if self.bands is not None:
            return self.bands, self.rows
        return choose_bands(self.threshold, self.num_perm, self.false_positive_weight, self.false_negative_weight)

    def signature_params(self) -> dict[str, str]:
        params = {f"lake.dedup.{k}": str(getattr(self, k)) for k in PARAM_PROPS}
        return params | {"lake.dedup.minhash": signature_algorithm()}  # a new engine makes stored signatures stale

    def labeler_version(self) -> str:
        return ";".join(f"{k}={getattr(self, k)}" for k in LABEL_PARAMS)


@dataclass
class DedupReport:
    table: str
    documents: int = 0  # rows labelled by this run
    hashed: int = 0  # rows whose signatures were computed by this run
    clusters: int = 0  # clusters with at least two documents
    duplicates: int = 0  # rows with dup_keep = false
    edges: int = 0  # verified edges after per-block reduction
    rounds: int = 0  # connected-components rounds
    bands: int = 0
    rows: int = 0
    seconds: float = 0.0
    size_histogram: dict[int, int] = field(default_factory=dict)  # cluster size -> clusters (sizes >= 2)
    snapshot_id: int | None = None
    base_snapshot_id: int | None = None
    run_id: str = ""
    mlflow_run_id: str | None = None
    rehashed_all: bool = False
    up_to_date: bool = False
    attribute_table: str = ""
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        if self.up_to_date:
            return f"{self.attribute_table} already holds these labels for {self.table}@{self.base_snapshot_id}"
        return (
            f"{self.documents} documents, {self.clusters} clusters, {self.duplicates} duplicates in {self.seconds:.1f}s"
        )

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["size_histogram"] = {str(k): v for k, v in sorted(self.size_histogram.items())}
        return out


# ---- keeper keys --------------------------------------------------------------------------------------------
def quality_scores(batch: pa.Table, spec: str | None) -> np.ndarray:
    """Keeper quality per row (higher is better, float64, null = -inf).

    ``None``: the number of ``*_reason`` columns that are null (a row that passed more quality filters ranks
    higher); 0 for every row when the table has none. A column name: that column. Anything else: a polars SQL
    expression over the row's columns, e.g. ``"lang_score * (gopher_reason IS NULL)"``.
    """
    n = batch.num_rows
    if spec is None:
        reasons = [c for c in batch.column_names if c.endswith("_reason")]
        score = np.zeros(n, dtype=np.float64)
        for c in reasons:
            score += pc.is_null(batch[c]).to_numpy(zero_copy_only=False).astype(np.float64)
        return score
    values = batch[spec] if spec in batch.column_names else compile_sql(spec).evaluate(batch)
    return pc.fill_null(values.cast(pa.float64()), -math.inf).to_numpy(zero_copy_only=False).astype(np.float64)


def quality_columns(schema: pa.Schema, spec: str | None) -> set[str]:
    """Columns the quality spec reads."""
    if spec is None:
        return {c for c in schema.names if c.endswith("_reason")}
    if spec in schema.names:
        return {spec}
    return set(compile_sql(spec).columns)


def check_quality_spec(schema: pa.Schema, spec: str | None) -> None:
    try:
        quality_scores(schema.empty_table(), spec)
    except Exception as exc:
        raise UsageError(f"--quality {spec!r} is neither a column nor a valid SQL expression: {exc}") from None


def _key_rows(batch: pa.Table, quality: str | None, fetch_time_column: str) -> pa.Table:
    n = batch.num_rows
    fetch = (
        batch[fetch_time_column].cast(pa.string())
        if fetch_time_column in batch.column_names
        else pa.nulls(n, pa.string())
    )
    doc_id = batch["doc_id"].cast(pa.string()) if "doc_id" in batch.column_names else pa.nulls(n, pa.string())
    return pa.table(
        {
            "node": pa.array(node_ids(batch), pa.int64()),
            "quality": pa.array(quality_scores(batch, quality), pa.float64()),
            "fetch": fetch,
            "doc_id": doc_id,
        }
    )


# ---- stage 2: buckets -> candidate pairs -> verified edges, on the shard actors ---------------------------------
class OnActors:
    """Shard calls on Ray actors (``operators.dedup_graph`` orchestrates): results are object refs, passed on
    from actor to actor."""

    @staticmethod
    def one(actor: Any, method: str, *args: Any) -> Any:
        return getattr(actor, method).remote(*args)

    @staticmethod
    def multi(actor: Any, method: str, k: int, *args: Any) -> list:
        refs = getattr(actor, method).options(num_returns=k).remote(*args)
        return [refs] if k == 1 else list(refs)

    @staticmethod
    def get(refs: list) -> list:
        import ray

        return ray.get(refs)


def _send_buckets(batch: pa.Table, shards: list, **kwargs: Any) -> pa.Table:
    """Bucket keys go to the shard of the bucket (``bucket % k``), signatures to the shard of their node."""
    import ray

    bucket, node, verify, sig_nodes, sigs = bucket_keys(batch, **kwargs)
    k = len(shards)
    owner = bucket % k
    sig_owner = sig_nodes % k
    refs = [shards[t].add_buckets.remote(bucket[owner == t], node[owner == t], verify[owner == t]) for t in range(k)]
    if sig_nodes.size:
        refs += [shards[t].add_sigs.remote(sig_nodes[sig_owner == t], sigs[sig_owner == t]) for t in range(k)]
    ray.get(refs)
    return pa.table({"rows": pa.array([bucket.size], pa.int64())})


def _send_keys(batch: pa.Table, shards: list, quality: str | None, fetch_time_column: str) -> pa.Table:
    import ray

    keys = _key_rows(batch, quality, fetch_time_column)
    k = len(shards)
    owner = keys["node"].to_numpy(zero_copy_only=False) % k
    ray.get([shards[t].add_keys.remote(keys.filter(pa.array(owner == t))) for t in range(k)])
    return pa.table({"rows": pa.array([keys.num_rows], pa.int64())})


def _apply_labels(batch: pa.Table, shards: list) -> pa.Table:
    import ray

    n = batch.num_rows
    nodes = node_ids(batch)
    k = len(shards)
    owner = nodes % k
    cluster_id = (
        batch["doc_id"].cast(pa.string()).to_numpy(zero_copy_only=False).astype(object)
        if "doc_id" in batch.column_names
        else np.array([None] * n, dtype=object)
    )
    missing = np.array([c is None for c in cluster_id], dtype=bool)
    cluster_id[missing] = nodes[missing].astype(str)
    size = np.ones(n, dtype=np.int64)
    keep = np.ones(n, dtype=bool)
    if shards:
        parts = [np.flatnonzero(owner == t) for t in range(k)]
        answers = ray.get([shards[t].labels_for.remote(nodes[parts[t]]) for t in range(k)])
        for rows, ans in zip(parts, answers, strict=True):
            if rows.size == 0 or ans.num_rows == 0:
                continue
            found = ans["found"].to_numpy(zero_copy_only=False)
            if not found.any():
                continue
            hit = rows[found]
            cluster_id[hit] = np.asarray(ans["cluster_id"].to_pylist(), dtype=object)[found]
            size[hit] = ans["size"].to_numpy(zero_copy_only=False)[found]
            keep[hit] = ans["keep"].to_numpy(zero_copy_only=False)[found]
    columns = {
        "dup_cluster_id": pa.array(cluster_id, pa.string()),
        "dup_cluster_size": pa.array(size, pa.int64()),
        "dup_keep": pa.array(keep, pa.bool_()),
    }
    for name, values in columns.items():
        if name in batch.column_names:
            batch = batch.set_column(batch.column_names.index(name), name, values)
        else:
            batch = batch.append_column(name, values)
    return batch


def _ids(lake: Lakehouse, identifier: str, snapshot_id: int | None = None) -> pa.Array:
    """The ``doc_id`` column of a table (one narrow column)."""
    if lake.resolve_snapshot(identifier, None) is None:
        return pa.array([], pa.string())
    return lake.read(identifier, as_of=snapshot_id, columns=("doc_id",))["doc_id"].combine_chunks().cast(pa.string())


def _without_ids(batch: pa.Table, ids: pa.Array) -> pa.Table:
    """Ray Data stage: rows whose ``doc_id`` is not in ``ids``."""
    return batch.filter(pc.invert(pc.is_in(batch["doc_id"].cast(pa.string()), value_set=ids)))


def _column_total(ds, column: str) -> int:
    """Run ``ds`` and add up one small count column (a row per block; cheaper than Ray's shuffle-based sum)."""
    return sum(int(pc.sum(b[column]).as_py() or 0) for b in ds.iter_batches(batch_format="pyarrow", batch_size=None))


# ---- the pipeline -------------------------------------------------------------------------------------------
def signature_table_for(identifier: str) -> str:
    return f"{identifier}_minhash"


def dedup_table(
    lake: Lakehouse, cfg: LakeConfig, identifier: str, config: DedupConfig | None = None, progress: bool = True
) -> DedupReport:
    """Label ``identifier``'s rows with duplicate clusters and keepers; returns counts and the new snapshot."""
    import ray
    from ray.data.expressions import col

    config = config or DedupConfig()
    started_at = datetime.now(UTC)
    t0 = time.perf_counter()
    table = lake.table(identifier)
    schema = table.schema().as_arrow()
    names = set(schema.names)
    if config.text_column not in names:
        raise UsageError(f"{identifier} has no {config.text_column!r} column to deduplicate")
    if "doc_id" not in names:
        raise UsageError(f"{identifier} has no doc_id column: dedup labels are stored by doc_id")
    check_quality_spec(schema, config.quality)
    base = lake.resolve_snapshot(identifier, None)
    if base is None:
        raise UsageError(f"{identifier} is empty: nothing to deduplicate")
    bands, rows = config.lsh
    report = DedupReport(table=identifier, run_id=uuid.uuid4().hex, bands=bands, rows=rows, base_snapshot_id=base)
    report.attribute_table = attributes.attribute_table(identifier, LABELER)
    version = config.labeler_version()
    state = attributes.label_state(lake, identifier, LABELER)
    if state.version == version and state.source_snapshot == base:  # these labels exist: nothing to do
        report.up_to_date, report.snapshot_id = True, state.snapshot_id
        if unrecorded_snapshot(lake, report.attribute_table) is not None:  # left by a run killed after its commit
            _finish(lake, cfg, identifier, replace(config, mlflow=False), report, started_at)
        return report

    sig_id = signature_table_for(identifier)
    labelled = state.version is not None
    params = config.signature_params()
    stored_ok = False
    if lake.exists(sig_id):
        props = lake.table(sig_id).properties
        stored_ok = all(props.get(k) == v for k, v in params.items())
    rehash_all = not stored_ok
    report.rehashed_all = rehash_all
    # narrow id columns only: which rows already have a signature, which already have labels
    signed_ids = _ids(lake, sig_id) if not rehash_all else None
    labelled_ids = attributes.labelled_ids(lake, identifier, LABELER) if labelled else None

    stages = tqdm(total=5, desc=f"dedup {identifier}", unit="stage", disable=not progress)
    clock = [time.perf_counter(), "setup"]

    def stage(name: str) -> None:
        now = time.perf_counter()
        report.stage_seconds[clock[1]] = round(now - clock[0], 3)
        clock[0], clock[1] = now, name
        if name != "setup":
            stages.set_postfix_str(name)

    init_ray(cfg)
    # one "Reducing the parallelism to 1" warning per Iceberg read of a small table is noise here
    logging.getLogger("ray.data._internal.datasource.iceberg_datasource").setLevel(logging.ERROR)
    catalog_kwargs = {"name": lake.name, **lake.catalog_kwargs}

    def read(table_id: str, snapshot: int | None, columns: list[str] | None = None, skip: pa.Array | None = None):
        ds = ray.data.read_iceberg(table_identifier=table_id, catalog_kwargs=catalog_kwargs, snapshot_id=snapshot)
        if columns is not None:
            ds = ds.select_columns(columns)
        if skip is not None and len(skip):
            ds = ds.map_batches(_without_ids, fn_kwargs={"ids": skip}, batch_format="pyarrow", num_cpus=0.25)
        return ds

    id_columns = [c for c in ("doc_id", "input_digest", "record_key") if c in names]
    opt_columns = [c for c in (config.url_column,) if c in names]

    # 1. signatures of the rows that have none
    stage("signatures")
    sig_table = ensure_side_table(lake, sig_id, SIG_SCHEMA, SIG_KIND, params | {"lake.dedup.source": identifier})
    op = MinHashSignature(config.num_perm, config.ngram, config.tokenizer, config.seed, config.url_column)

    def sign(batch: pa.Table) -> pa.Table:
        batch = batch.rename_columns(["text" if c == config.text_column else c for c in batch.column_names])
        out = op(batch)
        run = pa.array([report.run_id] * out.num_rows, pa.string())
        doc = out["doc_id"].cast(pa.string()) if "doc_id" in out.column_names else pa.nulls(out.num_rows, pa.string())
        return pa.table(
            [out["dup_node"], doc, out["dup_sig"], out["dup_shingles"], out["dup_text_hash"], out["dup_url_hash"], run],
            schema=SIG_SCHEMA,
        )

    has_new = True
    if signed_ids is not None:
        has_new = not bool(pc.all(pc.is_in(_ids(lake, identifier, base), value_set=signed_ids)).as_py())
    if has_new:
        docs = read(identifier, base, id_columns + opt_columns + [config.text_column], skip=signed_ids)
        signed = docs.map_batches(
            sign, batch_format="pyarrow", batch_size=config.batch_size, num_cpus=op.resources.num_cpus
        )
        props = {"lake.run_id": report.run_id, "lake.dedup.source_snapshot": str(base)}
        if rehash_all and sig_table.current_snapshot() is not None:
            replace_dataset(lake, sig_id, signed, props)
        else:
            append_dataset(lake, sig_id, signed, props)
    sig_snapshot = lake.resolve_snapshot(sig_id, None)
    if has_new and sig_snapshot is not None:
        summary = lake.table(sig_id).snapshot_by_id(sig_snapshot).summary
        report.hashed = int(summary.get("added-records") or 0) if summary is not None else 0
    stages.update()

    # 2. buckets -> verified edges, 3. connected components on the shard actors
    stage("buckets")
    shard_cls = ray.remote(num_cpus=0)(GraphShard)
    shards = [shard_cls.remote(i, config.num_shards) for i in range(config.num_shards)]
    try:
        if sig_snapshot is not None:
            sigs = read(sig_id, sig_snapshot)
            if config.scope == "batch":
                sigs = sigs.filter(expr=col("run_id") == report.run_id)
            sent = sigs.map_batches(
                _send_buckets,
                batch_format="pyarrow",
                batch_size=4096,
                fn_kwargs={
                    "shards": shards,
                    "bands": bands,
                    "rows": rows,
                    "num_perm": config.num_perm,
                    "seed": config.seed,
                    "verify": config.verify,
                    "exact": config.exact,
                    "url": config.url,
                },
            )
            _column_total(sent, "rows")
            report.edges = find_edges(shards, config.threshold, config.max_pair_bucket, OnActors)
        stages.update()
        stage("components")
        report.rounds = connected_components(shards, config.max_rounds, OnActors) if report.edges else 0
        stages.update()

        # 4. keepers
        stage("keepers")
        if report.edges:
            needed = quality_columns(schema, config.quality)
            key_columns = [c for c in schema.names if c != config.text_column or c in needed]
            keys = read(identifier, base, key_columns, skip=labelled_ids if config.scope == "batch" else None)
            sent_keys = keys.map_batches(
                _send_keys,
                batch_format="pyarrow",
                batch_size=4096,
                fn_kwargs={"shards": shards, "quality": config.quality, "fetch_time_column": config.fetch_time_column},
            )
            _column_total(sent_keys, "rows")
            report.size_histogram, report.duplicates = resolve_keepers(shards, OnActors)
            report.clusters = sum(report.size_histogram.values())
        stages.update()

        # 5. labels -> the attribute table (a few bytes per row gathered here; the documents are not rewritten)
        stage("labels")
        batch_only = config.scope == "batch" and labelled
        ids = read(identifier, base, id_columns, skip=labelled_ids if batch_only else None)
        labels = ids.map_batches(
            _apply_labels, batch_format="pyarrow", batch_size=4096, fn_kwargs={"shards": shards if report.edges else []}
        ).select_columns(["doc_id"] + [f.name for f in LABEL_FIELDS])
        parts = list(labels.iter_batches(batch_format="pyarrow", batch_size=None))
        rows_out = (
            pa.concat_tables(parts)
            if parts
            else pa.schema([pa.field("doc_id", pa.string()), *LABEL_FIELDS]).empty_table()
        )
        report.documents = rows_out.num_rows
        attributes.ensure_attribute_table(lake, identifier, LABELER, LABEL_FIELDS, version)
        report.snapshot_id = attributes.write_labels(
            lake, identifier, LABELER, rows_out, version=version, source_snapshot=base, run_id=report.run_id,
            replace=not batch_only,
        )  # fmt: skip
        stages.update()
        stage("done")
    finally:
        for shard in shards:
            ray.kill(shard)
        stages.close()
    report.seconds = round(time.perf_counter() - t0, 3)
    _finish(lake, cfg, identifier, config, report, started_at)
    return report


def _finish(
    lake: Lakehouse, cfg: LakeConfig, identifier: str, config: DedupConfig, report: DedupReport, started_at: datetime
) -> None:
    if config.mlflow:
        from pipelines.tracking import log_png, start_run

        params = {k: v for k, v in asdict(config).items() if k != "mlflow"} | {
            "table": identifier,
            "bands": report.bands,
            "rows": report.rows,
            "base_snapshot_id": report.base_snapshot_id,
            "snapshot_id": report.snapshot_id,
        }
        with start_run(cfg, "dedup", run_name=f"dedup {identifier}", params=params) as run:
            import mlflow

            mlflow.log_metrics(
                {
                    "documents": report.documents,
                    "hashed": report.hashed,
                    "clusters": report.clusters,
                    "duplicates": report.duplicates,
                    "edges": report.edges,
                    "rounds": report.rounds,
                    "seconds": report.seconds,
                    "docs_per_s": report.documents / report.seconds if report.seconds else 0.0,
                }
            )
            mlflow.log_dict(report.as_dict(), "dedup_report.json")
            log_png(cluster_size_figure(report), "cluster_sizes.png")
            report.mlflow_run_id = run.info.run_id
    record_run(
        lake,
        command="dedup",
        target_table=report.attribute_table,
        run_id=report.run_id,
        started_at=started_at,
        inputs=[],
        counts=report.as_dict(),
        snapshot_id=report.snapshot_id,
        mlflow_run_id=report.mlflow_run_id,
    )


def cluster_size_figure(report: DedupReport):
    """Histogram of duplicate-cluster sizes (log-scaled counts)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    hist = report.size_histogram
    if hist:
        sizes = sorted(hist)
        ax.bar([str(s) for s in sizes], [hist[s] for s in sizes], color="#4472c4")
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no duplicate clusters", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("cluster size (documents)")
    ax.set_ylabel("clusters")
    ax.set_title(f"{report.table}: {report.clusters} clusters, {report.duplicates} duplicates of {report.documents}")
    fig.tight_layout()
    return fig
