"""The duplicate graph of ``lake dedup``, in plain numpy: LSH bucket keys, candidate pairs, signature checks,
connected components and keepers, over shards that each own the nodes ``node % num_shards``.

``GraphShard`` is a plain class: ``pipelines.dedup`` runs one per Ray actor, tests run them in-process. The
orchestration functions (``find_edges``, ``connected_components``, ``resolve_keepers``) take the shards and a
``calls`` strategy with three methods: ``one(shard, method, *args)`` and ``multi(shard, method, k, *args)`` start
a call (``multi``: one result per shard), ``get(results)`` waits for a list of results. ``InProcess`` calls the
objects directly; on Ray the same functions pass object refs actor to actor and the driver never holds the arrays.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.dedup import band_hashes, decode_signatures, splitmix64

EXACT_SALT = np.uint64(0xE8AC7)
URL_SALT = np.uint64(0x5E1)


class InProcess:
    """Shard calls as plain method calls (tests, and a driver without Ray)."""

    @staticmethod
    def one(shard: Any, method: str, *args: Any) -> Any:
        return getattr(shard, method)(*args)

    @staticmethod
    def multi(shard: Any, method: str, k: int, *args: Any) -> list:
        out = getattr(shard, method)(*args)
        return [out] if k == 1 else list(out)

    @staticmethod
    def get(results: list) -> list:
        return results


# ---- buckets -> candidate pairs -> verified edges -------------------------------------------------------------


def bucket_keys(
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
    for enabled, column, salt in ((exact, "dup_text_hash", EXACT_SALT), (url, "dup_url_hash", URL_SALT)):
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


def bucket_pairs(
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
    star = multi & ~verify & ~new_group  # each member to the first one, not the first to itself
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


def route_edges(edges: np.ndarray, k: int) -> list[np.ndarray]:
    """Both directions of each edge ``(n, 2)``, split by the shard of the source node."""
    both = np.concatenate([edges, edges[:, ::-1]]) if edges.size else np.zeros((0, 2), np.int64)
    owner = both[:, 0] % k
    return [both[owner == t] for t in range(k)]


def find_edges(shards: list, threshold: float, max_pair_bucket: int, calls: Any = InProcess) -> int:
    """Buckets -> candidate pairs -> signature check where the signatures live -> edges on the shards."""
    k = len(shards)
    cands = [calls.multi(s, "candidates", k, max_pair_bucket) for s in shards]  # cands[s][t]: pairs for shard t
    attached = [calls.multi(shards[t], "attach", k, *[cands[s][t] for s in range(k)]) for t in range(k)]
    checked = [calls.multi(shards[t], "check", k, threshold, *[attached[s][t] for s in range(k)]) for t in range(k)]
    added = calls.get([calls.one(shards[t], "add_edge_parts", *[checked[s][t] for s in range(k)]) for t in range(k)])
    return sum(added) // 2


# ---- graph shards: edges, components, keepers ------------------------------------------------------------
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
        pairs, edges = bucket_pairs(bucket, node, verify, max_pair_bucket)
        owner = pairs[:, 0] % self.k
        routed = route_edges(edges, self.k)
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
        return self._out(route_edges(pairs, self.k))

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
        self.grand = self.label.copy()
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
        """Current labels (parents) of the nodes each shard asks for (in its order)."""
        return self._out([self._values_of(self.label, req) for req in requests])

    def lookup_grand(self, *requests: np.ndarray):
        """Grandparents (``set_grand``) of the nodes each shard asks for (in its order)."""
        return self._out([self._values_of(self.grand, req) for req in requests])

    def _values_of(self, values: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        if self.nodes.size == 0:
            return nodes.copy()
        return values[np.minimum(np.searchsorted(self.nodes, nodes), self.nodes.size - 1)]

    def parent_requests(self):
        """The parents of this shard's nodes, asked from their owners (for the grandparents)."""
        self._parents = [np.unique(self.label[self.label % self.k == t]) for t in range(self.k)]
        return self._out(self._parents)

    def set_grand(self, *answers: np.ndarray) -> int:
        """Grandparent ``f[f[u]]`` of every node, from its parent's owner's answer."""
        self.grand = self.label.copy()
        owner = self.label % self.k
        for t, (asked, answer) in enumerate(zip(self._parents, answers, strict=True)):
            sel = owner == t
            if sel.any():
                self.grand[sel] = answer[np.searchsorted(asked, self.label[sel])]
        return int(self.grand.size)

    def hook(self, *answers: np.ndarray):
        """FastSV (Zhang, Azad, Hu 2020) on this shard's edges ``(u, v)``, with ``gf[v]`` the neighbours'
        grandparents: aggressive hooking ``f[u] <- min(f[u], gf[v])`` and shortcutting ``f[u] <- min(f[u],
        gf[u])`` here; stochastic hooking ``f[f[u]] <- min(f[f[u]], gf[v])`` as (parent, value) messages to the
        parent's owner (``hooked``). Hooking a parent, not only the node, is what keeps a long chain of
        near-duplicates to O(log n) rounds (plain min-label propagation needs one round per hop)."""
        self._before = self.label.copy()
        new = np.minimum(self.label, self.grand)
        targets, values = np.zeros(0, np.int64), np.zeros(0, np.int64)
        if self.edge_src.size:
            neighbour = np.concatenate(answers)[self.edge_answer]
            np.minimum.at(new, self.edge_src, neighbour)
            parent = self.label[self.edge_src]
            order = np.lexsort((neighbour, parent))  # per parent, its smallest offer first
            parent, neighbour = parent[order], neighbour[order]
            first = np.ones(parent.size, dtype=bool)
            first[1:] = parent[1:] != parent[:-1]
            targets, values = parent[first], neighbour[first]
        self.label = new
        owner = targets % self.k
        return self._out([np.stack([targets[owner == t], values[owner == t]]) for t in range(self.k)])

    def hooked(self, *messages: np.ndarray) -> int:
        """Apply the (parent, value) hooks sent to this shard's nodes; returns the labels changed this round."""
        for message in messages:
            if message.size:
                np.minimum.at(self.label, np.searchsorted(self.nodes, message[0]), message[1])
        return int(np.count_nonzero(self.label != self._before))

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


def connected_components(shards: list, max_rounds: int, calls: Any = InProcess) -> int:
    """FastSV rounds across the shards (see ``GraphShard.hook``) until no label changes; returns the number of
    rounds. Labels only decrease and stay node ids of the component, so at the fixed point every node's label is
    its component's smallest node id."""
    k = len(shards)
    requests = [calls.multi(s, "finalize", k) for s in shards]  # requests[s][t]: neighbours of s owned by t
    for rounds in range(1, max_rounds + 1):
        asked = [calls.multi(s, "parent_requests", k) for s in shards]
        parents = [calls.multi(shards[t], "lookup", k, *[asked[s][t] for s in range(k)]) for t in range(k)]
        calls.get([calls.one(shards[s], "set_grand", *[parents[t][s] for t in range(k)]) for s in range(k)])
        grand = [calls.multi(shards[t], "lookup_grand", k, *[requests[s][t] for s in range(k)]) for t in range(k)]
        hooks = [calls.multi(shards[s], "hook", k, *[grand[t][s] for t in range(k)]) for s in range(k)]
        changed = calls.get([calls.one(shards[t], "hooked", *[hooks[s][t] for s in range(k)]) for t in range(k)])
        if sum(changed) == 0:
            return rounds
    raise RuntimeError(f"connected components did not converge in {max_rounds} rounds")


def resolve_keepers(shards: list, calls: Any = InProcess) -> tuple[dict[int, int], int]:
    """Members to their component root's shard, which picks the keeper; results back to the members' shards.
    Returns (cluster size -> clusters, for sizes >= 2) and the number of duplicates (rows not kept)."""
    k = len(shards)
    tables = [calls.multi(s, "to_roots", k) for s in shards]
    results = [calls.multi(shards[t], "resolve", k, *[tables[s][t] for s in range(k)]) for t in range(k)]
    stats = calls.get([calls.one(shards[s], "store", *[results[t][s] for t in range(k)]) for s in range(k)])
    histogram: Counter = Counter()
    duplicates = 0
    for st in stats:
        histogram.update({int(size): n for size, n in st["histogram"].items()})
        duplicates += st["duplicates"]
    return dict(sorted(histogram.items())), duplicates
