"""MLflow record of an ingest run: parameters, per-stage counts as metrics, the funnel and languages as PNG."""

from __future__ import annotations

from lake.config import LakeConfig
from pipelines.tracking import log_png, start_run

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
    import mlflow

    params = {
        "kind": kind,
        "inputs": report.inputs,
        "table": report.table,
        "first_input": paths[0][:250] if paths else "",
    }
    with start_run(cfg, EXPERIMENT, run_name=f"ingest-{kind}-{report.run_id[:8]}", params=params) as run:
        mlflow.set_tags(
            {"lake.run_id": report.run_id, "lake.table": report.table, "lake.snapshot_id": str(report.snapshot_id)}
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
        log_png(funnel_figure(report), "charts/funnel.png")
        log_png(languages_figure(report), "charts/languages.png")
        return run.info.run_id
