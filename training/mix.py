"""``lake mix SPEC.yaml``: label-driven sampling mixes pinned to snapshots, written as catalog tables.

A spec names source tables (each pinned to a snapshot, its attribute tables to their current snapshots), buckets
(a SQL predicate over a source's documents and labels, a weight, a maximum of epochs), a token budget counted
with a registered tokenizer, and optional phases (MiniCPM-style warmup / stable / anneal, each with a share of
the budget and its own bucket weights). Resolution is deterministic: the same spec on the same snapshots gives
the same rows in the same order and the same content digest.

How a bucket is sampled: its documents are put in a seeded hash order and read as one endless stream (pass
after pass: a pass is an epoch); phase after phase takes the next ``weight × phase budget`` tokens of that
stream, whole documents only. A document's ``repeat`` is how many times its start falls in the phase's stretch
(>1 when the bucket is smaller than its demand), so a bucket's *effective epochs* (GPT-3 Table 2.2: Common Crawl
0.44, Wikipedia 3.4) is tokens taken / tokens available. A bucket never goes past ``max_epochs``: its demand is
cut there and the report says so. A document in several buckets belongs to the first (in spec order).

Token counts: every document's tokens are estimated as its characters divided by the bucket's characters per
token, measured with the tokenizer on a deterministic sample of the bucket (``sample_docs`` documents);
tokenizing every candidate document would cost as much as the training run's own tokenizing pass.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import yaml

from catalog import attributes
from catalog.rewrite import ensure_side_table, replace_rows
from catalog.runs import record_run, unrecorded_snapshot
from catalog.store import Lakehouse
from lake.config import LakeConfig
from lake.errors import UsageError
from training.data import predicate_frame, row_hash

NAMESPACE = "mix"
KIND = "mix"
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
PROP_DIGEST = "lake.mix.digest"
PROP_SPEC = "lake.mix.spec"
PROP_SOURCES = "lake.mix.sources"
MIX_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string()),
        pa.field("source_table", pa.string()),
        pa.field("source_snapshot_id", pa.int64()),
        pa.field("bucket", pa.string()),
        pa.field("phase", pa.string()),
        pa.field("phase_index", pa.int32()),
        pa.field("repeat", pa.int32()),
        pa.field("tokens", pa.int64()),  # estimated tokens of one copy
    ]
)


# ---- the spec -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceSpec:
    table: str
    as_of: str | None = None
    text_column: str = "text"


@dataclass(frozen=True)
class BucketSpec:
    name: str
    source: str
    where: str | None = None
    weight: float = 1.0
    max_epochs: float = 1.0


@dataclass(frozen=True)
class PhaseSpec:
    name: str
    share: float
    weights: dict[str, float]


@dataclass(frozen=True)
class MixSpec:
    name: str
    tokenizer: str
    budget_tokens: int
    sources: dict[str, SourceSpec]
    buckets: list[BucketSpec]
    phases: list[PhaseSpec]
    seed: int = 0
    sample_docs: int = 200

    @property
    def table(self) -> str:
        return f"{NAMESPACE}.{self.name.replace('-', '_')}"

    def canonical(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str)


def _fail(path: str, message: str) -> UsageError:
    return UsageError(f"mix spec {path}: {message}")


def _known_keys(path: str, item: Any, allowed: set[str]) -> dict:
    if not isinstance(item, dict):
        raise _fail(path, "must be a mapping")
    unknown = sorted(set(item) - allowed)
    if unknown:
        raise _fail(path, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return item


def parse_spec(raw: Any) -> MixSpec:
    """A validated spec; mistakes are one-line usage errors naming the key."""
    top = _known_keys("", raw, {"name", "tokenizer", "budget_tokens", "sources", "buckets", "phases", "weights",
                                "seed", "sample_docs"})  # fmt: skip
    for key in ("name", "tokenizer", "budget_tokens", "sources", "buckets"):
        if key not in top:
            raise _fail(key, "is required")
    name = str(top["name"])
    if not NAME_RE.match(name):
        raise _fail("name", f"{name!r} must start with a letter and hold letters, digits, - or _")
    budget = top["budget_tokens"]
    if not isinstance(budget, int) or budget <= 0:
        raise _fail("budget_tokens", "must be a positive integer")
    sources = {}
    for key, item in _known_keys("sources", top["sources"], set(top["sources"] or {})).items():
        if isinstance(item, str):
            item = {"table": item}
        item = _known_keys(f"sources.{key}", item, {"table", "as_of", "text_column"})
        if "table" not in item:
            raise _fail(f"sources.{key}.table", "is required")
        as_of = item.get("as_of")
        sources[key] = SourceSpec(item["table"], None if as_of is None else str(as_of), item.get("text_column", "text"))
    buckets = []
    for key, item in _known_keys("buckets", top["buckets"], set(top["buckets"] or {})).items():
        item = _known_keys(f"buckets.{key}", item, {"source", "where", "weight", "max_epochs"})
        if item.get("source") not in sources:
            raise _fail(f"buckets.{key}.source", f"must be one of {', '.join(sources)}")
        weight, max_epochs = float(item.get("weight", 1.0)), float(item.get("max_epochs", 1.0))
        if weight < 0 or max_epochs <= 0:
            raise _fail(f"buckets.{key}", "weight must be >= 0 and max_epochs > 0")
        buckets.append(BucketSpec(key, item["source"], item.get("where"), weight, max_epochs))
    if not buckets:
        raise _fail("buckets", "name at least one bucket")
    names = [b.name for b in buckets]
    phases = []
    raw_phases = top.get("phases") or [{"name": "main", "share": 1.0, "weights": top.get("weights") or {}}]
    if top.get("phases") and top.get("weights"):
        raise _fail("weights", "give weights per phase when there are phases")
    for i, item in enumerate(raw_phases):
        item = _known_keys(f"phases[{i}]", item, {"name", "share", "weights"})
        weights = {b.name: b.weight for b in buckets} | {k: float(v) for k, v in (item.get("weights") or {}).items()}
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise _fail(f"phases[{i}].weights", f"unknown bucket(s) {', '.join(unknown)}")
        if sum(weights.values()) <= 0 or any(v < 0 for v in weights.values()):
            raise _fail(f"phases[{i}].weights", "must be >= 0 and not all 0")
        phases.append(PhaseSpec(str(item.get("name", f"phase{i}")), float(item.get("share", 0)), weights))
    total_share = sum(p.share for p in phases)
    if not math.isclose(total_share, 1.0, abs_tol=1e-6):
        raise _fail("phases", f"shares must add up to 1 (they add up to {total_share:g})")
    return MixSpec(name, str(top["tokenizer"]), budget, sources, buckets, phases, int(top.get("seed", 0)),
                   int(top.get("sample_docs", 200)))  # fmt: skip


def load_spec(path: str | Path) -> MixSpec:
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"no mix spec at {path}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"mix spec {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_spec(raw)


# ---- resolution ---------------------------------------------------------------------------------------------
@dataclass
class PinnedSource:
    key: str
    table: str
    snapshot_id: int
    attributes: dict[str, int]  # labeler -> attribute table snapshot


@dataclass
class MixReport:
    name: str
    table: str
    snapshot_id: int | None = None
    tag: str = ""
    digest: str = ""
    tokenizer: str = ""
    budget_tokens: int = 0
    tokens: int = 0
    documents: int = 0  # rows of the mix (distinct document × phase)
    buckets: list[dict] = field(default_factory=list)
    phases: list[dict] = field(default_factory=list)
    sources: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    unchanged: bool = False
    run_id: str = ""
    mlflow_run_id: str | None = None

    def summary(self) -> str:
        head = f"mix {self.table}@{self.tag}: {self.tokens:,} tokens of {self.budget_tokens:,} in {self.documents} rows"
        epochs = ", ".join(f"{b['name']} {b['effective_epochs']:.2f}" for b in self.buckets)
        note = " (unchanged: same spec, same snapshots)" if self.unchanged else ""
        return f"{head}; effective epochs: {epochs}; {self.seconds:.1f}s{note}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pin_sources(lake: Lakehouse, spec: MixSpec) -> dict[str, PinnedSource]:
    pinned = {}
    for key, source in spec.sources.items():
        snapshot_id = lake.resolve_snapshot(source.table, source.as_of)
        if snapshot_id is None:
            raise UsageError(f"mix source {key}: {source.table} has no rows yet")
        attrs = {}
        for labeler, ident in attributes.attribute_tables(lake, source.table).items():
            snap = lake.resolve_snapshot(ident, None)
            if snap is not None:
                attrs[labeler] = snap
        pinned[key] = PinnedSource(key, source.table, snapshot_id, attrs)
    return pinned


def bucket_frames(lake: Lakehouse, spec: MixSpec, pinned: dict[str, PinnedSource]) -> dict[str, pl.DataFrame]:
    """Per bucket: ``doc_id`` and ``chars`` of its documents (the first bucket of a document keeps it)."""
    out: dict[str, pl.DataFrame] = {}
    taken: dict[str, pl.Series] = {}
    for bucket in spec.buckets:
        source = spec.sources[bucket.source]
        pin = pinned[bucket.source]
        joined = attributes.joined_frame(
            lake, source.table, list(pin.attributes), pin.snapshot_id, attribute_snapshots=pin.attributes
        )
        try:
            rows = (
                predicate_frame(joined, bucket.where)
                .select(pl.col("doc_id").cast(pl.String), pl.col(source.text_column).str.len_chars().alias("chars"))
                .filter(pl.col("doc_id").is_not_null() & (pl.col("chars") > 0))
                .unique("doc_id")
                .collect()
            )
        except (pl.exceptions.PolarsError, pl.exceptions.SQLInterfaceError) as exc:
            message = str(exc).splitlines()[0]
            raise UsageError(
                f"bucket {bucket.name}: predicate {bucket.where!r} fails on {source.table}: {message}"
            ) from None
        if bucket.source in taken:
            rows = rows.filter(~pl.col("doc_id").is_in(taken[bucket.source].implode()))
        taken[bucket.source] = pl.concat([taken.get(bucket.source, pl.Series("doc_id", [], pl.String)), rows["doc_id"]])
        order = [row_hash(d, f"mix{spec.seed}:{bucket.name}") for d in rows["doc_id"].to_list()]
        out[bucket.name] = rows.with_columns(pl.Series("order", order, pl.Int64)).sort("order")
    return out


def chars_per_token(lake: Lakehouse, spec: MixSpec, pinned, bucket: BucketSpec, rows: pl.DataFrame, tok) -> float:
    """Characters per token of the bucket, measured on its first ``sample_docs`` documents in hash order."""
    from training.tokenizer import chars_per_token as measure

    if rows.height == 0:
        return 1.0
    source = spec.sources[bucket.source]
    sample = rows["doc_id"].head(spec.sample_docs).to_list()
    frame = lake.table(source.table)
    texts = (
        pl.scan_iceberg(frame, snapshot_id=pinned[bucket.source].snapshot_id)
        .filter(pl.col("doc_id").is_in(sample))
        .select(pl.col(source.text_column))
        .collect()[source.text_column]
        .to_list()
    )
    texts = sorted((t for t in texts if t), key=lambda t: hashlib.sha256(t.encode()).hexdigest())
    return measure(tok, texts) if texts else 1.0


def phase_repeats(starts: np.ndarray, total: int, begin: float, end: float) -> np.ndarray:
    """Times each document (starting at ``starts`` within a pass of ``total`` tokens) starts inside the stream
    stretch [begin, end) of an endless repetition of the pass."""
    if total <= 0 or end <= begin:
        return np.zeros(len(starts), dtype=np.int64)
    first = np.maximum(0, np.ceil((begin - starts) / total))
    past = np.maximum(0, np.ceil((end - starts) / total))
    return (past - first).astype(np.int64)


def resolve_mix(lake: Lakehouse, spec: MixSpec, tok) -> tuple[pa.Table, MixReport, dict[str, PinnedSource]]:
    """The mix rows (sorted, deterministic) and the report, without writing anything."""
    pinned = pin_sources(lake, spec)
    frames = bucket_frames(lake, spec, pinned)
    report = MixReport(spec.name, spec.table, tokenizer=spec.tokenizer, budget_tokens=spec.budget_tokens)
    report.sources = [asdict(p) for p in pinned.values()]
    demand = {b.name: [0.0] * len(spec.phases) for b in spec.buckets}
    for i, phase in enumerate(spec.phases):
        total_weight = sum(phase.weights.values())
        for name, weight in phase.weights.items():
            demand[name][i] = spec.budget_tokens * phase.share * weight / total_weight
    parts = []
    phase_tokens = np.zeros((len(spec.phases), len(spec.buckets)), dtype=np.int64)
    phase_docs = np.zeros((len(spec.phases), len(spec.buckets)), dtype=np.int64)
    for j, bucket in enumerate(spec.buckets):
        rows = frames[bucket.name]
        cpt = chars_per_token(lake, spec, pinned, bucket, rows, tok)
        tokens = np.maximum(1, np.round(rows["chars"].to_numpy() / cpt)).astype(np.int64)
        available = int(tokens.sum())
        wanted = sum(demand[bucket.name])
        cap = bucket.max_epochs * available
        scale = min(1.0, cap / wanted) if wanted > 0 else 0.0
        starts = np.cumsum(tokens) - tokens
        cursor = 0.0
        taken = 0
        for i, phase in enumerate(spec.phases):
            want = demand[bucket.name][i] * scale
            repeats = phase_repeats(starts, available, cursor, cursor + want)
            cursor += want
            hit = repeats > 0
            phase_tokens[i, j] = int((repeats * tokens).sum())
            phase_docs[i, j] = int(hit.sum())
            taken += phase_tokens[i, j]
            if hit.any():
                pin = pinned[bucket.source]
                n = int(hit.sum())
                parts.append(
                    pa.table(
                        {
                            "doc_id": pa.array(rows["doc_id"].to_numpy()[hit].tolist(), pa.string()),
                            "source_table": pa.array([pin.table] * n, pa.string()),
                            "source_snapshot_id": pa.array([pin.snapshot_id] * n, pa.int64()),
                            "bucket": pa.array([bucket.name] * n, pa.string()),
                            "phase": pa.array([phase.name] * n, pa.string()),
                            "phase_index": pa.array([i] * n, pa.int32()),
                            "repeat": pa.array(repeats[hit], pa.int32()),
                            "tokens": pa.array(tokens[hit], pa.int64()),
                        },
                        schema=MIX_SCHEMA,
                    )
                )
        report.buckets.append(
            {
                "name": bucket.name,
                "source": pinned[bucket.source].table,
                "where": bucket.where,
                "documents_available": rows.height,
                "tokens_available": available,
                "chars_per_token": round(cpt, 4),
                "tokens_wanted": int(round(wanted)),
                "tokens_taken": int(taken),
                "documents_taken": int(phase_docs[:, j].max()) if len(spec.phases) else 0,
                "effective_epochs": round(taken / available, 4) if available else 0.0,
                "max_epochs": bucket.max_epochs,
                "capped": scale < 1.0,
            }
        )
    for i, phase in enumerate(spec.phases):
        report.phases.append(
            {
                "name": phase.name,
                "share": phase.share,
                "tokens": int(phase_tokens[i].sum()),
                "documents": int(phase_docs[i].sum()),
                "buckets": {b.name: int(phase_tokens[i, j]) for j, b in enumerate(spec.buckets)},
                "weights": phase.weights,
            }
        )
    rows = pa.concat_tables(parts) if parts else MIX_SCHEMA.empty_table()
    rows = rows.sort_by([("phase_index", "ascending"), ("bucket", "ascending"), ("doc_id", "ascending")])
    report.tokens = int(phase_tokens.sum())
    report.documents = rows.num_rows
    report.digest = content_digest(spec, pinned, rows)
    report.tag = f"digest-{report.digest[:12]}"
    return rows, report, pinned


def content_digest(spec: MixSpec, pinned: dict[str, PinnedSource], rows: pa.Table) -> str:
    """sha256 of the spec, the pinned snapshots and every row (in order)."""
    h = hashlib.sha256(spec.canonical().encode())
    h.update(json.dumps([asdict(p) for p in pinned.values()], sort_keys=True).encode())
    for batch in rows.to_batches(max_chunksize=65536):
        for column in batch.columns:
            h.update("\x1f".join(map(str, column.to_pylist())).encode())
            h.update(b"\x1e")
    return h.hexdigest()


def run_mix(cfg: LakeConfig, spec: MixSpec, mlflow: bool = True) -> MixReport:
    """Resolve ``spec``, write it as ``mix.NAME`` (one snapshot, tagged ``digest-…``) unless the current snapshot
    already holds the same digest, and log the report with its chart."""
    from training import registry
    from training.tokenizer import load_tokenizer

    started_at = datetime.now(UTC)
    t0 = time.perf_counter()
    lake = Lakehouse.from_config(cfg)
    ref = registry.resolve(cfg, spec.tokenizer)
    tok = load_tokenizer(registry.download(cfg, ref, cfg.home / "cache" / "models"))
    rows, report, pinned = resolve_mix(lake, spec, tok)
    report.run_id = uuid.uuid4().hex
    table = ensure_side_table(lake, spec.table, MIX_SCHEMA, KIND, {PROP_SPEC: spec.name})
    current = table.current_snapshot()
    props = current.summary.additional_properties if current is not None and current.summary else {}
    if props.get(PROP_DIGEST) == report.digest:
        report.unchanged = True
        report.snapshot_id = current.snapshot_id
    else:
        sources = json.dumps([{"table": p.table, "snapshot_id": p.snapshot_id, "attributes": p.attributes}
                              for p in pinned.values()])  # fmt: skip
        snapshot_props = {
            PROP_DIGEST: report.digest,
            PROP_SPEC: spec.canonical(),
            PROP_SOURCES: sources,
            "lake.run_id": report.run_id,
        }
        replace_rows(lake, spec.table, rows, snapshot_props)
        report.snapshot_id = lake.resolve_snapshot(spec.table, None)
    if lake.tags(spec.table).get(report.tag) != report.snapshot_id:
        lake.tag(spec.table, report.tag, report.snapshot_id)
    report.seconds = round(time.perf_counter() - t0, 3)
    # unchanged and recorded: nothing to do; unchanged but in no lake.runs row (a run killed after its commit):
    # this run records it
    if report.unchanged and unrecorded_snapshot(lake, spec.table) is None:
        return report
    if mlflow:
        _track(cfg, spec, report)
    record_run(
        lake,
        command="mix",
        target_table=spec.table,
        run_id=report.run_id,
        started_at=started_at,
        inputs=[],
        counts=report.as_dict(),
        snapshot_id=report.snapshot_id,
        mlflow_run_id=report.mlflow_run_id,
    )
    return report


def mix_sources(lake: Lakehouse, snapshot_id: int, table: str) -> list[dict]:
    """The source snapshots a mix snapshot was resolved on (from its commit properties)."""
    snapshot = lake.table(table).snapshot_by_id(snapshot_id)
    props = snapshot.summary.additional_properties if snapshot and snapshot.summary else {}
    return json.loads(props.get(PROP_SOURCES) or "[]")


def _track(cfg: LakeConfig, spec: MixSpec, report: MixReport) -> None:
    import mlflow

    from pipelines.tracking import log_png, start_run

    params = {"name": spec.name, "table": spec.table, "tokenizer": spec.tokenizer, "budget_tokens": spec.budget_tokens,
              "digest": report.digest, "snapshot_id": report.snapshot_id}  # fmt: skip
    with start_run(cfg, "mix", run_name=f"mix {spec.name}", params=params) as run:
        metrics = {"tokens": report.tokens, "documents": report.documents, "seconds": report.seconds}
        metrics |= {f"effective_epochs/{b['name']}": b["effective_epochs"] for b in report.buckets}
        mlflow.log_metrics(metrics)
        mlflow.log_dict(report.as_dict(), "mix_report.json")
        mlflow.log_text(yaml.safe_dump(json.loads(spec.canonical()), sort_keys=False), "mix_spec.yaml")
        log_png(mix_figure(report), "mix.png")
        report.mlflow_run_id = run.info.run_id


def mix_figure(report: MixReport):
    """Tokens per phase stacked by bucket, and each bucket's effective epochs."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=100)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    names = [b["name"] for b in report.buckets]
    bottom = np.zeros(len(report.phases))
    for name in names:
        values = np.array([p["buckets"][name] for p in report.phases], dtype=float)
        left.bar([p["name"] for p in report.phases], values, bottom=bottom, label=name)
        bottom += values
    left.set_ylabel("tokens")
    left.set_title("tokens per phase")
    left.legend(fontsize=8)
    right.bar(names, [b["effective_epochs"] for b in report.buckets], color="#4472c4")
    right.set_ylabel("effective epochs")
    right.set_title(f"{report.table}@{report.tag}")
    right.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    return fig
