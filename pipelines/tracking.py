"""MLflow runs for pipelines, the same way everywhere.

- Tracking URI from the lake configuration (``MLFLOW_TRACKING_URI`` or the embedded ``sqlite:///$LAKE_HOME/mlflow.db``).
- With a local (sqlite or file) store, a new experiment gets ``artifact_location`` under
  ``cfg.mlflow_artifacts_dir``, so artifacts never land in ``./mlruns`` of whatever directory the command ran in
  (stack.md §5). A server-side store keeps the server's own artifact root.
- Telemetry off (``MLFLOW_DISABLE_TELEMETRY``), set before mlflow is imported.

Usage::

    with start_run(cfg, "dedup", run_name="dedup web.documents", params={"threshold": 0.8}) as run:
        mlflow.log_metrics({...})
        log_png(fig, "cluster_sizes.png")
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.config import LakeConfig
from core.locks import first_use_lock


def _is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def _experiment_id(mlflow, cfg: LakeConfig, experiment: str) -> str:
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    kwargs: dict[str, Any] = {}
    if _is_local_store(cfg.mlflow_uri_effective):
        location = Path(cfg.mlflow_artifacts_dir).resolve() / experiment
        location.mkdir(parents=True, exist_ok=True)
        kwargs["artifact_location"] = location.as_uri()
    try:
        return mlflow.create_experiment(experiment, **kwargs)
    except Exception:  # created by a concurrent run between our lookup and our create
        found = mlflow.get_experiment_by_name(experiment)
        if found is None:
            raise
        return found.experiment_id


@contextmanager
def start_run(
    cfg: LakeConfig, experiment: str, run_name: str | None = None, params: dict[str, Any] | None = None
) -> Iterator[Any]:
    """An active MLflow run in ``experiment`` (created if missing); params logged up front.

    The run ends FINISHED, or FAILED when the body raises (the exception propagates).
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    if cfg.is_embedded_catalog or _is_local_store(cfg.mlflow_uri_effective):
        Path(cfg.home).mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(cfg.mlflow_uri_effective)
    # creating the embedded database is routine, not news for the command's stderr
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    with first_use_lock(cfg.mlflow_uri_effective):  # the first access creates (migrates) the database
        experiment_id = _experiment_id(mlflow, cfg, experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        if params:
            mlflow.log_params({k: ("" if v is None else v) for k, v in params.items()})
        yield run


def log_png(fig, name: str) -> None:
    """Log a matplotlib figure as ``name`` (a .png) in the active run, then close it."""
    import matplotlib.pyplot as plt
    import mlflow

    if not name.endswith(".png"):
        name += ".png"
    try:
        mlflow.log_figure(fig, name)
    finally:
        plt.close(fig)
