"""The MLflow model registry as llm-lake uses it: tokenizers and checkpoints are registered model versions whose
tags name what they were made from, so ``lake lineage`` can walk back from any of them.

Plain artifact folders are registered with ``create_model_version`` (``mlflow.register_model`` refuses them in
MLflow 3, shared/notes/stack.md §5); versions are normalised to ``int`` (a ``str`` over REST, an ``int`` on sqlite).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lake.config import LakeConfig
from lake.errors import UsageError

# lineage tags on runs and model versions
TAG_KIND = "lake.kind"  # tokenizer | model
TAG_STAGE = "lake.stage"  # tokenizer | pretrain | sft | ...
TAG_TABLE = "lake.dataset.table"
TAG_SNAPSHOT = "lake.dataset.snapshot_id"
TAG_PREDICATE = "lake.dataset.predicate"
TAG_DATASETS = "lake.datasets"  # JSON list of {table, snapshot_id, predicate} when a job reads several tables
TAG_TOKENIZER = "lake.tokenizer"  # models:/NAME/V
TAG_PARENT = "lake.parent"  # models:/NAME/V this one was derived from
TAG_REFERENCE = "lake.reference"  # models:/NAME/V of the frozen reference (DPO, PPO, GRPO)
TAG_REWARD_MODEL = "lake.reward_model"  # models:/NAME/V of the reward model a policy was optimised against
TAG_COMMIT = "lake.code_commit"
TAG_RUN_KEY = "lake.run_key"  # the resume key of a training job
MODEL_URI_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: int
    run_id: str | None
    source: str
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def client(cfg: LakeConfig):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep stderr to our one-line messages
    import mlflow
    from mlflow import MlflowClient

    if cfg.is_embedded_catalog:
        Path(cfg.home).mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(cfg.mlflow_uri_effective)
    return MlflowClient(tracking_uri=cfg.mlflow_uri_effective)


def parse_model_uri(uri: str) -> tuple[str, int | None, str | None]:
    match = MODEL_URI_RE.match(uri or "")
    if not match:
        raise UsageError(f"{uri!r} is not a model URI; use models:/NAME/VERSION or models:/NAME@ALIAS")
    version = match.group("version")
    return match.group("name"), int(version) if version else None, match.group("alias")


def resolve(cfg: LakeConfig, uri: str) -> ModelRef:
    """The registered version behind ``models:/NAME/V`` or ``models:/NAME@ALIAS``; unknown ones are usage errors."""
    from mlflow.exceptions import MlflowException

    name, version, alias = parse_model_uri(uri)
    mlflow_client = client(cfg)
    try:
        if alias:
            mv = mlflow_client.get_model_version_by_alias(name, alias)
        else:
            mv = mlflow_client.get_model_version(name, str(version))
    except MlflowException:
        known = ", ".join(sorted(m.name for m in mlflow_client.search_registered_models())) or "none yet"
        raise UsageError(f"no registered model version {uri}; registered models: {known}") from None
    return ModelRef(mv.name, int(mv.version), mv.run_id, mv.source, dict(mv.tags or {}))


def download(cfg: LakeConfig, ref: ModelRef, dest: Path) -> Path:
    """The version's files in a local folder (cached by name and version under ``dest``)."""
    import mlflow

    client(cfg)
    target = dest / ref.name / str(ref.version)
    if (target / ".complete").exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    mlflow.artifacts.download_artifacts(artifact_uri=ref.source, dst_path=str(target))
    # download_artifacts puts the folder's files under its last path component
    inner = target / ref.source.rstrip("/").rsplit("/", 1)[-1]
    if inner.is_dir():
        for item in inner.iterdir():
            item.rename(target / item.name)
        inner.rmdir()
    (target / ".complete").touch()
    return target


def register(cfg: LakeConfig, name: str, run_id: str, artifact_path: str, tags: dict[str, Any]) -> ModelRef:
    """Register the run's ``artifact_path`` folder as a new version of ``name`` with lineage ``tags``."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(cfg)
    try:
        mlflow_client.create_registered_model(name)
    except MlflowException:  # already there (or created concurrently)
        pass
    run = mlflow_client.get_run(run_id)
    source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    str_tags = {k: "" if v is None else str(v) for k, v in tags.items()}
    mv = mlflow_client.create_model_version(name, source=source, run_id=run_id, tags=str_tags)
    return ModelRef(mv.name, int(mv.version), run_id, source, str_tags)


def find_version(cfg: LakeConfig, name: str, run_key: str) -> ModelRef | None:
    """The version of ``name`` whose ``lake.run_key`` tag is ``run_key`` (a job already done), if any."""
    mlflow_client = client(cfg)
    for mv in mlflow_client.search_model_versions(f"name = '{name}'"):
        if (mv.tags or {}).get(TAG_RUN_KEY) == run_key:
            return ModelRef(mv.name, int(mv.version), mv.run_id, mv.source, dict(mv.tags or {}))
    return None


def versions_of_run(cfg: LakeConfig, run_id: str) -> list[ModelRef]:
    mlflow_client = client(cfg)
    found = mlflow_client.search_model_versions(f"run_id = '{run_id}'")
    return [ModelRef(mv.name, int(mv.version), mv.run_id, mv.source, dict(mv.tags or {})) for mv in found]


def all_versions(cfg: LakeConfig) -> list[dict[str, Any]]:
    """Every registered version with its aliases and lineage tags, newest first within a model."""
    mlflow_client = client(cfg)
    rows = []
    for model in sorted(mlflow_client.search_registered_models(), key=lambda m: m.name):
        aliases: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        versions = mlflow_client.search_model_versions(f"name = '{model.name}'")
        for mv in sorted(versions, key=lambda v: -int(v.version)):
            tags = dict(mv.tags or {})
            rows.append(
                {
                    "name": mv.name,
                    "version": int(mv.version),
                    "aliases": ",".join(sorted(aliases.get(str(mv.version), []))),
                    "kind": tags.get(TAG_KIND, ""),
                    "stage": tags.get(TAG_STAGE, ""),
                    "table": tags.get(TAG_TABLE, ""),
                    "snapshot_id": tags.get(TAG_SNAPSHOT, ""),
                    "tokenizer": tags.get(TAG_TOKENIZER, ""),
                    "parent": tags.get(TAG_PARENT, ""),
                    "run_id": mv.run_id,
                    "tags": tags,
                }
            )
    return rows


def dataset_tags(sources) -> dict[str, str]:
    """Lineage tags for the snapshots a job read (``training.data.SnapshotSource`` or dicts with table,
    snapshot_id, predicate); the first also in the single-table tags, which the MLflow UI shows as columns."""
    items = [
        {"table": s["table"], "snapshot_id": s["snapshot_id"], "predicate": s.get("predicate") or ""}
        if isinstance(s, dict)
        else {"table": s.table, "snapshot_id": s.snapshot_id, "predicate": s.predicate or ""}
        for s in sources
    ]
    first = items[0]
    tags = {TAG_TABLE: first["table"], TAG_SNAPSHOT: str(first["snapshot_id"]), TAG_PREDICATE: first["predicate"]}
    if len(items) > 1:
        tags[TAG_DATASETS] = json.dumps(items)
    return tags


def datasets_of(tags: dict[str, str]) -> list[dict]:
    """The snapshots a version's tags name (inverse of ``dataset_tags``)."""
    if tags.get(TAG_DATASETS):
        return json.loads(tags[TAG_DATASETS])
    if tags.get(TAG_TABLE) and tags.get(TAG_SNAPSHOT):
        return [{"table": tags[TAG_TABLE], "snapshot_id": int(tags[TAG_SNAPSHOT]),
                 "predicate": tags.get(TAG_PREDICATE, "")}]  # fmt: skip
    return []


def short_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def code_commit() -> str:
    """The git commit of the code that runs (``LAKE_CODE_COMMIT`` where no checkout is at hand, as in Ray jobs)."""
    if os.environ.get("LAKE_CODE_COMMIT"):
        return os.environ["LAKE_CODE_COMMIT"]
    here = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def log_snapshot_input(table: str, snapshot_id: int, predicate: str | None, counts: dict[str, Any]) -> None:
    """Log a pinned catalog snapshot as the active run's training dataset (stack.md: a URI source, no resolver)."""
    import mlflow
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    dataset = MetaDataset(
        source=HTTPDatasetSource(f"iceberg://lake/{table}?snapshot_id={snapshot_id}"),
        name=f"{table}@{snapshot_id}",
        digest=str(snapshot_id),
    )
    tags = {"table": table, "snapshot_id": str(snapshot_id), "predicate": predicate or ""}
    tags |= {k: str(v) for k, v in counts.items()}
    mlflow.log_input(dataset, context="training", tags=tags)
