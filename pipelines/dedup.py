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
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from catalog import attributes
from catalog.rewrite import append_dataset, ensure_side_table, replace_dataset
from catalog.runs import record_run
from catalog.store import Lakehouse
from core.config import LakeConfig
from core.errors import UsageError
from operators.dedup import (
    TOKENIZERS,
    MinHashSignature,
    band_hashes,
    choose_bands,
    decode_signatures,
    node_ids,
    signature_algorithm,
    splitmix64,
)
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
_EXACT_SALT = np.uint64(0xE8AC7)
_URL_SALT = np.uint64(0x5E1)


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
    if spec in batch.column_names:
        values = batch[spec].cast(pa.float64())
    else:
        import polars as pl

        frame = pl.from_arrow(batch) if n else pl.from_arrow(batch.schema.empty_table())
        values = frame.select(pl.sql_expr(spec).cast(pl.Float64).alias("q")).to_arrow()["q"]
    return pc.fill_null(values, -math.inf).to_numpy(zero_copy_only=False).astype(np.float64)


def quality_columns(schema: pa.Schema, spec: str | None) -> set[str]:
    """Columns the quality spec reads."""
    if spec is None:
        return {c for c in schema.names if c.endswith("_reason")}
    if spec in schema.names:
        return {spec}
    import polars as pl

    return set(pl.sql_expr(spec).meta.root_names())


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
def _bucket_keys(
    batch: pa.Table, bands: int, rows: int, num_perm: int, seed: int, verify: bool, exact: bool, url: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(bucket, node, verify) per (document, LSH band) plus exact-text and URL key rows; and the (node, signature)
    pairs that verification needs."""
    nodes = batch["dup_node"].to_numpy(zero_copy_only=False).astype(np.int64)
    has = batch["dup_shingles"].to_numpy(zero_copy_only=False) > 0
    buckets, members, checks = [], [], []
    sig_nodes, sigs = np.zeros(0, np.int64), np.zeros((0, num_perm), np.uint32)
    if has.any():
        idx = np.flatnonzero(has)
        band_sigs = decode_signatures(batch["dup_sig"].take(pa.array(idx)), num_perm)
        keys = band_hashes(band_sigs, bands, rows, seed)  # (n, bands)
        buckets.append(keys.reshape(-1))
        members.append(np.repeat(nodes[idx], bands))
        checks.append(np.full(idx.size * bands, verify))
        if verify:
            sig_nodes, sigs = nodes[idx], band_sigs
    for enabled, column, salt in ((exact, "dup_text_hash", _EXACT_SALT), (url, "dup_url_hash", _URL_SALT)):
        if not enabled or column not in batch.column_names:
            continue
        values = batch[column]
        valid = pc.is_valid(values).to_numpy(zero_copy_only=False)
        if not valid.any():
            continue
        raw = pc.fill_null(values, 0).to_numpy(zero_copy_only=False).astype(np.int64)[valid].view(np.uint64)
        buckets.append(splitmix64(raw ^ salt).view(np.int64))
        members.append(nodes[valid])
        checks.append(np.zeros(int(valid.sum()), dtype=bool))
    if not buckets:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool), sig_nodes, sigs
    return np.concatenate(buckets), np.concatenate(members), np.concatenate(checks), sig_nodes, sigs


def _send_buckets(batch: pa.Table, shards: list, **kwargs: Any) -> pa.Table:
    """Bucket keys go to the shard of the bucket (``bucket % k``), signatures to the shard of their node."""
    import ray

    bucket, node, verify, sig_nodes, sigs = _bucket_keys(batch, **kwargs)
    k = len(shards)
    owner = bucket % k
    sig_owner = sig_nodes % k
    refs = [shards[t].add_buckets.remote(bucket[owner == t], node[owner == t], verify[owner == t]) for t in range(k)]
    if sig_nodes.size:
        refs += [shards[t].add_sigs.remote(sig_nodes[sig_owner == t], sigs[sig_owner == t]) for t in range(k)]
    ray.get(refs)
    return pa.table({"rows": pa.array([bucket.size], pa.int64())})


def _bucket_pairs(
    bucket: np.ndarray, node: np.ndarray, verify: np.ndarray, max_pair_bucket: int
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs ``(n, 2)`` (smaller node first, unique) of the verified buckets, and the edges ``(n, 2)`` of
    the unverified (exact text / URL) buckets: a star to each bucket's first node."""
    none = np.zeros((0, 2), np.int64)
    if bucket.size < 2:
        return none, none
    order = np.lexsort((node, bucket))
    bucket, node, verify = bucket[order], node[order], verify[order]
    new_group = np.ones(bucket.size, dtype=bool)
    new_group[1:] = bucket[1:] != bucket[:-1]
    keep = np.ones(bucket.size, dtype=bool)
    keep[1:] = new_group[1:] | (node[1:] != node[:-1])  # the same node twice in a bucket
    bucket, node, verify, new_group = bucket[keep], node[keep], verify[keep], new_group[keep]
    group_id = np.cumsum(new_group) - 1
    starts = np.flatnonzero(new_group)
    sizes = np.diff(np.append(starts, bucket.size))
    multi = sizes[group_id] > 1
    star = multi & ~verify
    edges = np.stack([node[starts[group_id[star]]], node[star]], axis=1) if star.any() else none
    check_groups = np.flatnonzero((sizes > 1) & verify[starts])
    if check_groups.size == 0:
        return none, edges
    g_start, g_size = starts[check_groups], sizes[check_groups]
    pairs = g_size == 2  # the common case, vectorised
    parts = [np.stack([node[g_start[pairs]], node[g_start[pairs] + 1]], axis=1)]
    for s, size in zip(g_start[~pairs], g_size[~pairs], strict=True):
        members = node[s : s + size]
        if size <= max_pair_bucket:
            i, j = np.triu_indices(size, k=1)
        else:  # a large bucket (a template): every member against the first max_pair_bucket ones
            lead = np.arange(max_pair_bucket)
            i = np.repeat(lead, size)
            j = np.tile(np.arange(size), max_pair_bucket)
            ok = j > i
            i, j = i[ok], j[ok]
        parts.append(np.stack([members[i], members[j]], axis=1))
    cand = np.concatenate(parts)
    cand = cand[cand[:, 0] != cand[:, 1]]
    cand = np.unique(np.sort(cand, axis=1), axis=0)
    return cand, edges


def _route_edges(edges: np.ndarray, k: int) -> list[np.ndarray]:
    """Both directions of each edge ``(n, 2)``, split by the shard of the source node."""
    both = np.concatenate([edges, edges[:, ::-1]]) if edges.size else np.zeros((0, 2), np.int64)
    owner = both[:, 0] % k
    return [both[owner == t] for t in range(k)]


def find_edges(shards: list, threshold: float, max_pair_bucket: int) -> int:
    """Buckets -> candidate pairs -> signature check where the signatures live -> edges on the shards."""
    import ray

    k = len(shards)
    cands = [_multi(s.candidates, k, max_pair_bucket) for s in shards]  # cands[s][t]: pairs for shard t
    attached = [_multi(shards[t].attach, k, *[cands[s][t] for s in range(k)]) for t in range(k)]
    checked = [_multi(shards[t].check, k, threshold, *[attached[s][t] for s in range(k)]) for t in range(k)]
    added = ray.get([shards[t].add_edge_parts.remote(*[checked[s][t] for s in range(k)]) for t in range(k)])
    return sum(added) // 2


# ---- stage 3-4: graph shards ----------------------------------------------------------------------------------
def _split(values: np.ndarray, k: int) -> list[np.ndarray]:
    owner = values % k
    return [values[owner == t] for t in range(k)]


class GraphShard:
    """The nodes ``node % num_shards == shard``: their edges, labels, keeper keys and final labels."""

    def __init__(self, shard: int, num_shards: int) -> None:
        self.shard, self.k = shard, num_shards
        self._src: list[np.ndarray] = []
        self._dst: list[np.ndarray] = []
        self.nodes = np.zeros(0, np.int64)
        self.label = np.zeros(0, np.int64)
        self.keys: list[pa.Table] = []
        self.result: pa.Table | None = None
        self._buckets: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._sigs: list[tuple[np.ndarray, np.ndarray]] = []

    def _out(self, parts: list):
        return parts[0] if self.k == 1 else tuple(parts)

    # buckets and candidate verification
    def add_buckets(self, bucket: np.ndarray, node: np.ndarray, verify: np.ndarray) -> int:
        self._buckets.append((bucket, node, verify))
        return int(bucket.size)

    def add_sigs(self, nodes: np.ndarray, sigs: np.ndarray) -> int:
        self._sigs.append((nodes, sigs))
        return int(nodes.size)

    def candidates(self, max_pair_bucket: int):
        """Candidate pairs of this shard's buckets to the shard of their first node; exact/URL edges to theirs."""
        parts, self._buckets = self._buckets, []
        if parts:
            bucket, node, verify = (np.concatenate([p[i] for p in parts]) for i in range(3))
        else:
            bucket, node, verify = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
        pairs, edges = _bucket_pairs(bucket, node, verify, max_pair_bucket)
        owner = pairs[:, 0] % self.k
        routed = _route_edges(edges, self.k)
        return self._out([{"pairs": pairs[owner == t], "edges": routed[t]} for t in range(self.k)])

    def _signatures_of(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, signatures) of ``nodes`` from the signatures this shard holds."""
        if not hasattr(self, "_sig_nodes"):
            parts, self._sigs = self._sigs, []
            if parts:
                sig_nodes = np.concatenate([p[0] for p in parts])
                sigs = np.concatenate([p[1] for p in parts])
                order = np.argsort(sig_nodes, kind="stable")
                self._sig_nodes, self._sig_values = sig_nodes[order], sigs[order]
            else:
                self._sig_nodes, self._sig_values = np.zeros(0, np.int64), np.zeros((0, 0), np.uint32)
        if self._sig_nodes.size == 0 or nodes.size == 0:
            return np.zeros(nodes.size, bool), np.zeros((nodes.size, self._sig_values.shape[1]), np.uint32)
        idx = np.minimum(np.searchsorted(self._sig_nodes, nodes), self._sig_nodes.size - 1)
        return self._sig_nodes[idx] == nodes, self._sig_values[idx]

    def attach(self, *parts: dict):
        """Pairs whose first node is here get its signature and go on to the shard of their second node."""
        for part in parts:
            if part["edges"].size:
                self.add_edges(part["edges"][:, 0], part["edges"][:, 1])
        pairs = np.concatenate([p["pairs"] for p in parts]) if parts else np.zeros((0, 2), np.int64)
        found, sigs = self._signatures_of(pairs[:, 0])
        pairs, sigs = pairs[found], sigs[found]
        owner = pairs[:, 1] % self.k
        return self._out([{"pairs": pairs[owner == t], "sigs": sigs[owner == t]} for t in range(self.k)])

    def check(self, threshold: float, *parts: dict):
        """Pairs whose second node is here: kept when the signature similarity reaches ``threshold``."""
        pairs = np.concatenate([p["pairs"] for p in parts])
        first = np.concatenate([p["sigs"] for p in parts]) if pairs.size else None
        found, second = self._signatures_of(pairs[:, 1])
        if pairs.size:
            ok = found & ((first == second).mean(axis=1) >= threshold)
            pairs = pairs[ok]
        return self._out(_route_edges(pairs, self.k))

    def add_edge_parts(self, *parts: np.ndarray) -> int:
        """Add routed edges ``(n, 2)``; returns the directed edges this shard holds, star edges included."""
        for part in parts:
            if part.size:
                self.add_edges(part[:, 0], part[:, 1])
        self._sig_nodes = np.zeros(0, np.int64)
        self._sig_values = np.zeros((0, 0), np.uint32)
        return int(sum(s.size for s in self._src))

    # edges and propagation
    def add_edges(self, src: np.ndarray, dst: np.ndarray) -> int:
        self._src.append(np.asarray(src, np.int64))
        self._dst.append(np.asarray(dst, np.int64))
        return int(len(src))

    def finalize(self):
        src = np.concatenate(self._src) if self._src else np.zeros(0, np.int64)
        dst = np.concatenate(self._dst) if self._dst else np.zeros(0, np.int64)
        self._src, self._dst = [], []
        if src.size:
            pairs = np.unique(np.stack([src, dst], axis=1), axis=0)
            src, dst = pairs[:, 0], pairs[:, 1]
        self.nodes = np.unique(src)
        self.label = self.nodes.copy()
        self.edge_src = np.searchsorted(self.nodes, src)
        # neighbour labels are asked from their owners once per round, in a fixed order
        owner = dst % self.k
        self.requests = [np.unique(dst[owner == t]) for t in range(self.k)]
        offsets = np.cumsum([0] + [r.size for r in self.requests])
        self.edge_answer = np.empty(dst.size, dtype=np.int64)
        for t in range(self.k):
            sel = owner == t
            self.edge_answer[sel] = offsets[t] + np.searchsorted(self.requests[t], dst[sel])
        return self._out(self.requests)

    def lookup(self, *requests: np.ndarray):
        """Current labels of the nodes each shard asks for (in its order)."""
        out = []
        for req in requests:
            idx = np.searchsorted(self.nodes, req)
            out.append(self.label[np.minimum(idx, max(self.nodes.size - 1, 0))] if self.nodes.size else req.copy())
        return self._out(out)

    def propagate(self, *answers: np.ndarray) -> int:
        neighbour = np.concatenate(answers) if answers else np.zeros(0, np.int64)
        new = self.label.copy()
        if self.edge_src.size:
            np.minimum.at(new, self.edge_src, neighbour[self.edge_answer])
        changed = int(np.count_nonzero(new < self.label))
        self.label = new
        return changed

    def jump_requests(self):
        self._jump = [np.unique(self.label[self.label % self.k == t]) for t in range(self.k)]
        return self._out(self._jump)

    def jump(self, *answers: np.ndarray) -> int:
        new = self.label.copy()
        owner = self.label % self.k
        for t, (req, ans) in enumerate(zip(self._jump, answers, strict=True)):
            sel = owner == t
            if sel.any():
                new[sel] = np.minimum(new[sel], ans[np.searchsorted(req, self.label[sel])])
        changed = int(np.count_nonzero(new < self.label))
        self.label = new
        return changed

    # keeper
    def add_keys(self, keys: pa.Table) -> int:
        if self.nodes.size == 0 or keys.num_rows == 0:
            return 0
        mask = np.isin(keys["node"].to_numpy(zero_copy_only=False), self.nodes)
        if mask.any():
            self.keys.append(keys.filter(pa.array(mask)))
        return int(mask.sum())

    def to_roots(self):
        """Members (with keeper keys; absent rows flagged) sent to the shard of their component root."""
        members = pa.table({"node": self.nodes, "root": self.label})
        if self.keys:
            keys = pa.concat_tables(self.keys)
            keys = (
                keys.group_by("node", use_threads=False)
                .aggregate([("quality", "max"), ("fetch", "min"), ("doc_id", "min")])
                .rename_columns(["node", "quality", "fetch", "doc_id"])
            )
            members = members.join(keys, "node", join_type="left outer")
        else:
            members = members.append_column("quality", pa.nulls(members.num_rows, pa.float64()))
            members = members.append_column("fetch", pa.nulls(members.num_rows, pa.string()))
            members = members.append_column("doc_id", pa.nulls(members.num_rows, pa.string()))
        self.keys = []
        present = pc.is_valid(members["quality"])
        members = members.append_column("present", present)
        roots = members["root"].to_numpy(zero_copy_only=False)
        owner = roots % self.k
        return self._out([members.filter(pa.array(owner == t)) for t in range(self.k)])

    def resolve(self, *member_tables: pa.Table):
        """For the roots this shard owns: size (present members) and keeper; results go to the members' shards."""
        members = pa.concat_tables(member_tables).filter(pc.field("present"))
        empty = pa.table(
            {
                "node": pa.array([], pa.int64()),
                "cluster_id": pa.array([], pa.string()),
                "size": pa.array([], pa.int64()),
                "keep": pa.array([], pa.bool_()),
            }
        )
        if members.num_rows == 0:
            return self._out([empty] * self.k)
        members = members.sort_by(
            [
                ("root", "ascending"),
                ("quality", "descending"),
                ("fetch", "ascending"),
                ("doc_id", "ascending"),
                ("node", "ascending"),
            ],
            null_placement="at_end",
        )
        root = members["root"].to_numpy(zero_copy_only=False)
        first = np.ones(root.size, dtype=bool)
        first[1:] = root[1:] != root[:-1]
        starts = np.flatnonzero(first)
        sizes = np.diff(np.append(starts, root.size))
        group = np.cumsum(first) - 1
        doc_ids = members["doc_id"].to_numpy(zero_copy_only=False)
        nodes = members["node"].to_numpy(zero_copy_only=False)
        keeper_id = np.array(
            [d if d is not None else str(n) for d, n in zip(doc_ids[starts], nodes[starts], strict=True)],
            dtype=object,
        )
        out = pa.table(
            {
                "node": nodes,
                "cluster_id": pa.array(keeper_id[group], pa.string()),
                "size": pa.array(sizes[group], pa.int64()),
                "keep": pa.array(first),
            }
        )
        owner = nodes % self.k
        return self._out([out.filter(pa.array(owner == t)) for t in range(self.k)])

    def store(self, *results: pa.Table) -> dict[str, Any]:
        result = pa.concat_tables(results).sort_by("node")
        self.result = result
        self._result_nodes = result["node"].to_numpy(zero_copy_only=False)
        keep = result["keep"].to_numpy(zero_copy_only=False)
        sizes = result["size"].to_numpy(zero_copy_only=False)
        # each cluster counted once: by its keeper row
        hist = Counter(int(s) for s in sizes[keep] if s > 1)
        return {"histogram": dict(hist), "duplicates": int((~keep).sum())}

    def labels_for(self, nodes: np.ndarray) -> pa.Table:
        """(found, cluster_id, size, keep) for the given nodes, in their order."""
        if self.result is None or self.result.num_rows == 0:
            return pa.table({"found": np.zeros(nodes.size, bool)})
        idx = np.searchsorted(self._result_nodes, nodes)
        idx = np.minimum(idx, self._result_nodes.size - 1)
        found = self._result_nodes[idx] == nodes
        picked = self.result.take(pa.array(idx))
        return picked.drop_columns(["node"]).append_column("found", pa.array(found))


def _multi(method, k: int, *args) -> list:
    refs = method.options(num_returns=k).remote(*args)
    return [refs] if k == 1 else list(refs)


def _send_edges(batch: pa.Table, shards: list) -> pa.Table:
    import ray

    src = batch["src"].to_numpy(zero_copy_only=False)
    dst = batch["dst"].to_numpy(zero_copy_only=False)
    k = len(shards)
    both_src, both_dst = np.concatenate([src, dst]), np.concatenate([dst, src])
    owner = both_src % k
    ray.get([shards[t].add_edges.remote(both_src[owner == t], both_dst[owner == t]) for t in range(k)])
    return pa.table({"edges": pa.array([src.size], pa.int64())})


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


def connected_components(shards: list, max_rounds: int) -> int:
    """Min-label propagation with pointer jumping across the shard actors; returns the number of rounds."""
    import ray

    k = len(shards)
    requests = [_multi(s.finalize, k) for s in shards]  # requests[s][t]
    for rounds in range(1, max_rounds + 1):
        answers = [_multi(shards[t].lookup, k, *[requests[s][t] for s in range(k)]) for t in range(k)]
        changed = ray.get([shards[s].propagate.remote(*[answers[t][s] for t in range(k)]) for s in range(k)])
        jump_req = [_multi(s.jump_requests, k) for s in shards]
        jump_ans = [_multi(shards[t].lookup, k, *[jump_req[s][t] for s in range(k)]) for t in range(k)]
        changed += ray.get([shards[s].jump.remote(*[jump_ans[t][s] for t in range(k)]) for s in range(k)])
        if sum(changed) == 0:
            return rounds
    raise RuntimeError(f"connected components did not converge in {max_rounds} rounds")


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
            report.edges = find_edges(shards, config.threshold, config.max_pair_bucket)
        stages.update()
        stage("components")
        report.rounds = connected_components(shards, config.max_rounds) if report.edges else 0
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
            tables = [_multi(s.to_roots, config.num_shards) for s in shards]
            k = config.num_shards
            results = [_multi(shards[t].resolve, k, *[tables[s][t] for s in range(k)]) for t in range(k)]
            stats = ray.get([shards[s].store.remote(*[results[t][s] for t in range(k)]) for s in range(k)])
            hist: Counter = Counter()
            for st in stats:
                hist.update({int(size): n for size, n in st["histogram"].items()})
                report.duplicates += st["duplicates"]
            report.size_histogram = dict(sorted(hist.items()))
            report.clusters = sum(hist.values())
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
