"""``lake lineage MODEL_URI``: from a registered version back to the raw inputs its data came from.

The walk, nearest first: the model version, the MLflow run that made it, its tokenizer (walked the same way) and
parent model (later stages), the reward model and frozen reference it was optimised with (DPO, PPO, GRPO,
best-of-N), the catalog snapshot it trained on (or the ``mix`` it trained on, then the source
snapshots that mix sampled), the ``lake.runs`` pipeline runs (ingest, import, dedup) that built that snapshot or
one of its ancestors, and their raw inputs (URI and content digest).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import Any

from catalog.attributes import attribute_table
from catalog.schemas import RUNS_TABLE
from catalog.store import Lakehouse
from lake.config import LakeConfig
from training import registry
from training.mix import KIND as MIX_KIND
from training.mix import mix_sources


def snapshot_ancestors(lake: Lakehouse, table: str, snapshot_id: int) -> list[int]:
    """``snapshot_id`` and every snapshot before it on its branch of history."""
    iceberg = lake.table(table)
    chain, current = [], iceberg.snapshot_by_id(snapshot_id)
    while current is not None:
        chain.append(current.snapshot_id)
        current = iceberg.snapshot_by_id(current.parent_snapshot_id) if current.parent_snapshot_id else None
    return chain


def pipeline_runs(lake: Lakehouse, table: str, snapshot_id: int) -> list[dict[str, Any]]:
    """Succeeded ``lake.runs`` rows whose commit is part of the snapshot's history, oldest first."""
    if not lake.exists(RUNS_TABLE):
        return []
    history = set(snapshot_ancestors(lake, table, snapshot_id))
    runs = lake.read(RUNS_TABLE).to_pylist()
    found = [
        r for r in runs if r["target_table"] == table and r["status"] == "succeeded" and r["snapshot_id"] in history
    ]
    return sorted(found, key=lambda r: r["started_at"])


def lineage(cfg: LakeConfig, model_uri: str) -> list[dict[str, Any]]:
    """Lineage nodes of ``model_uri``, nearest first, each with its ``kind`` and identifiers; no repeats."""
    lake = Lakehouse.from_config(cfg)
    mlflow_client = registry.client(cfg)
    nodes: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    pending: deque[Callable[[], None]] = deque()  # breadth first: nearer nodes are listed before farther ones

    def add(key: tuple, node: dict[str, Any]) -> bool:
        if key in seen:
            return False
        seen.add(key)
        nodes.append(node)
        return True

    def walk_version(uri: str, kind: str | None = None) -> None:
        ref = registry.resolve(cfg, uri)
        node_kind = kind or ("tokenizer" if ref.tags.get(registry.TAG_KIND) == "tokenizer" else "model")
        if not add(
            ("version", ref.name, ref.version),
            {
                "kind": node_kind,
                "name": ref.name,
                "version": ref.version,
                "uri": ref.uri,
                "run_id": ref.run_id,
                "stage": ref.tags.get(registry.TAG_STAGE, ""),
                "code_commit": ref.tags.get(registry.TAG_COMMIT, ""),
            },
        ):
            return
        if ref.run_id:
            run = mlflow_client.get_run(ref.run_id)
            add(
                ("run", ref.run_id),
                {
                    "kind": "run",
                    "run_id": ref.run_id,
                    "name": run.info.run_name,
                    "experiment_id": run.info.experiment_id,
                    "status": run.info.status,
                },
            )
        tags = ref.tags
        for item in registry.datasets_of(tags):
            pending.append(lambda d=item: walk_snapshot(d["table"], int(d["snapshot_id"]), d["predicate"]))
        for related in (registry.TAG_PARENT, registry.TAG_REWARD_MODEL, registry.TAG_REFERENCE):
            if tags.get(related):  # the model it came from, the reward model it was optimised for, its reference
                pending.append(lambda uri=tags[related]: walk_version(uri))
        if tags.get(registry.TAG_TOKENIZER):
            pending.append(lambda: walk_version(tags[registry.TAG_TOKENIZER], "tokenizer"))

    def walk_mix(table: str, snapshot_id: int) -> None:
        tags = {name: snap for name, snap in lake.tags(table).items() if snap == snapshot_id}
        sources = mix_sources(lake, snapshot_id, table)
        add(
            ("mix", table, snapshot_id),
            {
                "kind": "mix",
                "table": table,
                "snapshot_id": snapshot_id,
                "tag": ",".join(sorted(tags)),
                "uri": f"iceberg://{cfg.catalog_name}/{table}?snapshot_id={snapshot_id}",
            },
        )
        for item in sources:
            pending.append(lambda d=item: walk_snapshot(d["table"], int(d["snapshot_id"]), ""))
            for labeler, attr_snapshot in sorted((item.get("attributes") or {}).items()):
                ident = attribute_table(item["table"], labeler)
                pending.append(lambda t=ident, a=attr_snapshot: walk_attributes(t, int(a)))

    def walk_attributes(table: str, snapshot_id: int) -> None:
        """An attribute table a mix's predicates read, and the label runs behind it."""
        if not add(("snapshot", table, snapshot_id), {"kind": "attributes", "table": table, "snapshot_id": snapshot_id,
                   "uri": f"iceberg://{cfg.catalog_name}/{table}?snapshot_id={snapshot_id}"}):  # fmt: skip
            return
        for run in pipeline_runs(lake, table, snapshot_id):
            node = {"kind": "pipeline_run", "command": run["command"], "run_id": run["run_id"], "table": table,
                    "snapshot_id": run["snapshot_id"], "mlflow_run_id": run["mlflow_run_id"], "counts": {}}  # fmt: skip
            pending.append(lambda key=("pipeline_run", run["run_id"]), node=node: add(key, node))

    def walk_snapshot(table: str, snapshot_id: int, predicate: str) -> None:
        if lake.exists(table) and lake.kind_of(table) == MIX_KIND:
            walk_mix(table, snapshot_id)
            return
        if not add(
            ("snapshot", table, snapshot_id),
            {
                "kind": "dataset_snapshot",
                "table": table,
                "snapshot_id": snapshot_id,
                "predicate": predicate,
                "uri": f"iceberg://{cfg.catalog_name}/{table}?snapshot_id={snapshot_id}",
            },
        ):
            return
        runs = pipeline_runs(lake, table, snapshot_id)
        for run in runs:
            node = {
                "kind": "pipeline_run",
                "command": run["command"],
                "run_id": run["run_id"],
                "table": table,
                "snapshot_id": run["snapshot_id"],
                "mlflow_run_id": run["mlflow_run_id"],
                "counts": json.loads(run["counts"] or "{}"),
            }
            pending.append(lambda key=("pipeline_run", run["run_id"]), node=node: add(key, node))
        for run in runs:
            for item in run["inputs"] or []:
                node = {"kind": "raw_input", "uri": item["uri"], "digest": item["digest"], "run_id": run["run_id"]}
                pending.append(lambda key=("raw", item["digest"]), node=node: add(key, node))

    pending.append(lambda: walk_version(model_uri))
    while pending:
        pending.popleft()()
    return nodes
