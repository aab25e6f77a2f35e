"""The duplicate graph without Ray: GraphShard objects in-process, against scipy and brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as scipy_components

from operators.dedup import minhash_signatures
from operators.dedup_graph import (
    GraphShard,
    InProcess,
    bucket_keys,
    bucket_pairs,
    connected_components,
    find_edges,
    resolve_keepers,
    route_edges,
)


def _random_graph(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    return rng.integers(0, n, size=(m, 2))


def _chain(n: int) -> np.ndarray:
    return np.stack([np.arange(n - 1), np.arange(1, n)], axis=1)


def _stars(n: int, centres: int) -> np.ndarray:
    leaves = np.arange(centres, n)
    return np.stack([leaves % centres, leaves], axis=1)


def _small_components(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Pairs and triangles and short paths: many components of at most ``size`` nodes, shuffled ids."""
    perm = rng.permutation(n)
    groups = [perm[i : i + size] for i in range(0, n - size + 1, size)]
    return np.concatenate(
        [np.stack([g[:-1], g[1:]], axis=1) for g in groups] + [np.stack([g[:1], g[-1:]], axis=1) for g in groups]
    )


GRAPHS = {
    "random_sparse": lambda rng: _random_graph(rng, 10_000, 6_000),
    "random_dense": lambda rng: _random_graph(rng, 10_000, 30_000),
    "chain": lambda rng: _chain(10_000)[rng.permutation(9_999)],
    "stars": lambda rng: _stars(10_000, 7),
    "many_small": lambda rng: _small_components(rng, 10_000, 3),
}


def _our_components(edges: np.ndarray, ids: np.ndarray, k: int) -> tuple[dict[int, int], int]:
    """node id -> component label (its smallest node id) from k in-process shards; and the rounds taken."""
    shards = [GraphShard(t, k) for t in range(k)]
    routed = route_edges(ids[edges], k)
    for t in range(k):
        shards[t].add_edge_parts(routed[t])
    rounds = connected_components(shards, max_rounds=64)
    labels = {}
    for shard in shards:
        assert np.all(shard.nodes % k == shard.shard), "a shard holds only its own nodes"
        labels.update(zip(shard.nodes.tolist(), shard.label.tolist(), strict=True))
    return labels, rounds


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_components_equal_scipy(name, k):
    rng = np.random.default_rng(7)
    edges = GRAPHS[name](rng)
    n = 10_000
    # sparse, unordered node ids (as node_ids() gives), so routing by id % k is exercised
    ids = np.sort(rng.choice(2**40, size=n, replace=False)).astype(np.int64)[rng.permutation(n)]
    ours, rounds = _our_components(edges, ids, k)

    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    count, scipy_label = scipy_components(graph, directed=False)
    touched = np.unique(edges)  # nodes without edges never reach a shard
    assert set(ours) == set(ids[touched].tolist())
    # same partition, and each component labelled with its smallest member
    smallest = {}
    for node in touched:
        c = scipy_label[node]
        smallest[c] = min(smallest.get(c, ids[node]), ids[node])
    assert all(ours[ids[node]] == smallest[scipy_label[node]] for node in touched)
    assert len(set(ours.values())) == len({scipy_label[i] for i in touched})
    if name == "chain":
        assert rounds <= 20, "pointer jumping: a 10k chain takes O(log n) rounds, not O(n)"


def _brute_pairs(bucket, node, verify, max_pair_bucket):
    groups: dict[int, list[int]] = {}
    checked: dict[int, bool] = {}
    for b, v, c in zip(bucket.tolist(), node.tolist(), verify.tolist(), strict=True):
        groups.setdefault(b, [])
        if v not in groups[b]:
            groups[b].append(v)
        checked[b] = checked.get(b, c)
    pairs, stars = set(), set()
    for b, members in groups.items():
        members = sorted(members)
        if len(members) < 2:
            continue
        if checked[b]:
            lead = members[:max_pair_bucket]
            pairs |= {(min(a, c), max(a, c)) for a in lead for c in members if a != c}
        else:
            stars |= {(members[0], c) for c in members[1:]}
    return pairs, stars


@pytest.mark.parametrize("max_pair_bucket", [3, 50])
def test_bucket_pairs_equal_brute_force(max_pair_bucket):
    rng = np.random.default_rng(3)
    size = 3_000
    bucket = rng.integers(0, 400, size)  # some buckets far larger than max_pair_bucket
    node = rng.integers(0, 1_500, size)
    verify = bucket % 5 != 0  # a bucket is either LSH (checked) or exact/URL (star edges)
    pairs, edges = bucket_pairs(bucket, node, verify, max_pair_bucket)
    want_pairs, want_stars = _brute_pairs(bucket, node, verify, max_pair_bucket)
    assert set(map(tuple, pairs.tolist())) == want_pairs
    assert len(pairs) == len(want_pairs), "pairs are unique"
    assert set(map(tuple, edges.tolist())) == want_stars


def test_edges_components_and_keepers_from_real_signatures():
    """Near-duplicate texts through bucket keys, signature checks, components and keepers, on 2 shards."""
    base = [
        "the river rose in the night and the town woke to water in every street and square",
        "a new library opened downtown with a reading room for children and a hall for lectures",
        "farmers in the valley planted late this year because the spring rains never came",
    ]
    loners = [
        "quantum error correction needs many physical qubits for each logical one",
        "bake the bread at a high heat first and then lower the oven for a crisp crust",
        "the committee postponed its vote on the budget until after the holidays",
    ]
    texts = []
    for text, loner in zip(base, loners, strict=True):
        texts += [text, text + " today", text.replace("the ", "a ", 1), loner]  # three near copies, one loner
    nodes = np.arange(100, 100 + len(texts), dtype=np.int64) * 7919
    sigs, shingles, _ = minhash_signatures(texts, num_perm=128, ngram=3)
    batch = pa.table(
        {
            "dup_node": nodes,
            "dup_shingles": shingles,
            "dup_sig": pa.array([s.astype("<u4").tobytes() for s in sigs], pa.binary()),
        }
    )
    k = 2
    shards = [GraphShard(t, k) for t in range(k)]
    bucket, node, verify, sig_nodes, sig_values = bucket_keys(
        batch, bands=32, rows=4, num_perm=128, seed=42, verify=True, exact=False, url=False
    )
    for t in range(k):
        shards[t].add_buckets(bucket[bucket % k == t], node[bucket % k == t], verify[bucket % k == t])
        shards[t].add_sigs(sig_nodes[sig_nodes % k == t], sig_values[sig_nodes % k == t])
    edges = find_edges(shards, threshold=0.5, max_pair_bucket=50, calls=InProcess)
    assert edges >= 6
    connected_components(shards, max_rounds=16)
    keys = pa.table(
        {
            "node": nodes,
            "quality": np.arange(len(texts), dtype=np.float64),  # later copies rank higher
            "fetch": pa.array(["2024"] * len(texts)),
            "doc_id": pa.array([f"d{i}" for i in range(len(texts))]),
        }
    )
    for shard in shards:
        shard.add_keys(keys)
    histogram, duplicates = resolve_keepers(shards)
    assert histogram == {3: 3} and duplicates == 6
    labels = {}
    for shard in shards:
        table = shard.labels_for(nodes)
        for i, row in enumerate(table.to_pylist()):
            if row["found"]:
                labels[i] = row
    for group in range(3):
        members = [4 * group + j for j in range(3)]
        assert {labels[m]["cluster_id"] for m in members} == {f"d{4 * group + 2}"}, "highest quality keeps"
        assert [labels[m]["keep"] for m in members] == [False, False, True]
        assert 4 * group + 3 not in labels, "the loner joins no cluster"
    assert list(itertools.chain(*[s.nodes.tolist() for s in shards])), "shards hold the clustered nodes"
