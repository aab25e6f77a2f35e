"""MLflow record of an ingest run: parameters, per-stage counts as metrics, the funnel and languages as PNG."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lake.config import LakeConfig

EXPERIMENT = "lake-ingest"


def funnel_figure(report):
    """Horizontal funnel: rows entering each stage, the kept share dark, drops labelled with their top reason."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report.stages)
    counts = [report.stages[n] for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 1.5))
    y = range(len(names))[::-1]
    ax.barh(list(y), [c.rows_in for c in counts], color="#c8d6e5", label="in")
    ax.barh(list(y), [c.kept for c in counts], color="#2e86de", label="kept")
    for yi, c in zip(y, counts, strict=True):
        top = max(c.dropped.items(), key=lambda kv: kv[1])[0] if c.dropped else ""
        ax.text(c.rows_in, yi, f" {c.kept}/{c.rows_in} {top}", va="center", fontsize=8)
    ax.set_yticks(list(y), names)
    ax.set_xlabel("records")
    ax.set_title(f"{report.table}: {report.records} records -> {report.documents} documents")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def languages_figure(report):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(report.languages.items(), key=lambda kv: -kv[1])[:20]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar([k for k, _ in items], [v for _, v in items], color="#10ac84")
    ax.set_ylabel("documents")
    ax.set_title("documents per language")
    fig.tight_layout()
    return fig


def log_ingest_run(cfg: LakeConfig, report, kind: str, paths: list[str]) -> str:
    """Log ``report`` as one MLflow run; returns its run id."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import matplotlib.pyplot as plt
    import mlflow

    mlflow.set_tracking_uri(cfg.mlflow_uri_effective)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        location = (
            (cfg.mlflow_artifacts_dir / EXPERIMENT).as_uri() if cfg.mlflow_uri_effective.startswith("sqlite") else None
        )
        experiment_id = mlflow.create_experiment(EXPERIMENT, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"ingest-{kind}-{report.run_id[:8]}") as run:
        mlflow.set_tags(
            {"lake.run_id": report.run_id, "lake.table": report.table, "lake.snapshot_id": str(report.snapshot_id)}
        )
        mlflow.log_params(
            {
                "kind": kind,
                "inputs": report.inputs,
                "table": report.table,
                "first_input": paths[0][:250] if paths else "",
            }
        )
        metrics = {
            "records": report.records,
            "documents": report.documents,
            "rejects": report.rejects,
            "seconds": report.seconds,
        }
        for stage, counts in report.stages.items():
            metrics |= {f"{stage}/{k}": v for k, v in counts.to_dict().items()}
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            for name, make in (("funnel.png", funnel_figure), ("languages.png", languages_figure)):
                fig = make(report)
                fig.savefig(Path(tmp) / name, dpi=110)
                plt.close(fig)
                mlflow.log_artifact(str(Path(tmp) / name), artifact_path="charts")
        return run.info.run_id
