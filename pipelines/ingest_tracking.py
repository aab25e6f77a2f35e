"""MLflow record of an ingest run: parameters, per-stage counts as metrics, the funnel and languages as PNG."""

from __future__ import annotations

from contextlib import ExitStack

from core.config import LakeConfig
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


class IngestTracking:
    """The MLflow run of one ``lake ingest``, opened only when a first group is about to commit, so that every
    ``lake.runs`` row of the ingest names it; it ends FINISHED, or FAILED when the ingest raises."""

    def __init__(self, cfg: LakeConfig, kind: str, paths: list[str]) -> None:
        self.cfg, self.kind, self.paths = cfg, kind, paths
        self._stack = ExitStack()

    def __enter__(self) -> IngestTracking:
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.__exit__(*exc_info)

    def open(self, report) -> str:
        """Start the run (params and tags); its id goes into ``lake.runs``."""
        import mlflow

        params = {
            "kind": self.kind,
            "inputs": report.inputs,
            "table": report.table,
            "first_input": self.paths[0][:250] if self.paths else "",
        }
        run_name = f"ingest-{self.kind}-{report.run_id[:8]}"
        run = self._stack.enter_context(start_run(self.cfg, EXPERIMENT, run_name=run_name, params=params))
        mlflow.set_tags({"lake.run_id": report.run_id, "lake.table": report.table})
        return run.info.run_id

    def finish(self, report) -> None:
        """The outcome: counts as metrics, the funnel and languages as PNG (into the open run, if any)."""
        import mlflow

        if report.mlflow_run_id is None:
            return
        mlflow.set_tag("lake.snapshot_id", str(report.snapshot_id))
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
