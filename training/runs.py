"""What every training stage (pretrain, SFT, reward model, …) shares around its loop: the MLflow run found again
by its run key, the Ray Train trainer named by the same key (Ray Train V2 resumes from its own storage), a progress
bar fed by rank 0, buffered MLflow metrics that never log a step twice, checkpoints reported through Ray Train,
publishing the final model files to the registry, and the loss curve picture.

Driver-side helpers take the stage's own tags, params and names; worker-side helpers (``MetricsLog``,
``report_checkpoint``, ``maybe_inject_fault``) run inside ``ray.train`` workers.
"""

from __future__ import annotations

import math
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lake.config import LakeConfig
from lake.errors import LakeError, UsageError
from training import registry
from training.data import SnapshotSource

EXPERIMENT = "train"
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "chat_template.jinja")
FAULT_STEP_ENV = "LAKE_FAULT_TRAIN_STEP"  # tests: fail a worker once after this step ...
FAULT_MARKER_ENV = "LAKE_FAULT_TRAIN_MARKER"  # ... unless this file exists (it is created on the failure)
DATA_PIPELINE_CPUS = 1.5  # pretraining's shuffle tasks ask one CPU each, plus the read and tokenize stages


# ---- driver ------------------------------------------------------------------------------------------------------
def training_datasets(sources: list[SnapshotSource]) -> list[dict]:
    """What a run names as its data: each table snapshot it read, or the mix (whose own lineage names the
    snapshots it sampled)."""
    out: dict[tuple, dict] = {}
    for src in sources:
        if src.selection is not None:
            sel = src.selection
            key = (sel.table, sel.snapshot_id)
            item = out.setdefault(key, {"table": sel.table, "snapshot_id": sel.snapshot_id, "predicate": "",
                                        "counts": {"tag": sel.tag, "documents": 0}})  # fmt: skip
            item["counts"]["documents"] += src.rows_selected
        else:
            key = (src.table, src.snapshot_id, src.predicate)
            out[key] = {"table": src.table, "snapshot_id": src.snapshot_id, "predicate": src.predicate or "",
                        "counts": src.lineage()}  # fmt: skip
    return list(out.values())


def find_or_create_run(
    cfg: LakeConfig, run_key: str, run_name: str, params: dict[str, Any], tags: dict[str, str], sources: Iterable
) -> tuple[str, bool]:
    """The MLflow run of a job: the latest one with the same key (unfinished: a resume; finished: done), or a new
    one with the job's params, lineage tags and snapshot inputs. Returns (run id, finished)."""
    import mlflow

    from pipelines.tracking import start_run

    mlflow_client = registry.client(cfg)
    experiment = mlflow_client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        runs = mlflow_client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{registry.TAG_RUN_KEY}` = '{run_key}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if runs:
            run = runs[0]
            return run.info.run_id, run.info.status == "FINISHED"
    with start_run(cfg, EXPERIMENT, run_name=run_name, params=params) as run:
        mlflow.set_tags(tags | {registry.TAG_RUN_KEY: run_key})
        for item in training_datasets(list(sources)):
            registry.log_snapshot_input(item["table"], item["snapshot_id"], item["predicate"], item["counts"])
        run_id = run.info.run_id
    # start_run ended it FINISHED; it is RUNNING until the model is registered
    mlflow_client.update_run(run_id, status="RUNNING")
    return run_id, False


def publish_model(cfg: LakeConfig, name: str, run_id: str, ckpt: Path, tags: dict[str, Any]) -> registry.ModelRef:
    """Log the checkpoint's model and tokenizer files (no optimizer state) to the run and register them."""
    import mlflow

    registry.client(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model"
        out.mkdir()
        for item in ckpt.iterdir():
            if item.is_file() and (item.name in MODEL_FILES or item.name.startswith(("tokenizer", "special_tokens"))):
                shutil.copy2(item, out / item.name)
        mlflow.MlflowClient(cfg.mlflow_uri_effective).log_artifacts(run_id, str(out), artifact_path="model")
    return registry.register(cfg, name, run_id, "model", tags)


def log_loss_curve(
    mlflow_client, run_id: str, keys: tuple[str, ...] = ("train/loss", "val/loss"), ylabel: str = "nats/token"
) -> None:
    """The run's loss metrics by step, as ``loss.png`` in the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        points = sorted((m.step, m.value) for m in mlflow_client.get_metric_history(run_id, key))
        if points:
            style = "-" if key.startswith("train/") else "o-"
            ax.plot(*zip(*points, strict=True), style, label=key, markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(alpha=0.3)
    try:
        mlflow_client.log_figure(run_id, fig, "loss.png")
    finally:
        plt.close(fig)


def torch_trainer(cfg: LakeConfig, worker: Callable, plan: dict, run_key: str, scaling, datasets: dict | None = None):
    """Ray Train V2 trainer whose run name is the resume key, so the same job finds its own checkpoints again."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    s = scaling
    return _trainer_class(TorchTrainer)(
        worker,
        train_loop_config=plan,
        scaling_config=ScalingConfig(
            num_workers=s.num_workers,
            use_gpu=s.gpus_per_worker > 0,
            resources_per_worker={"CPU": s.cpus_per_worker} | ({"GPU": s.gpus_per_worker} if s.gpus_per_worker else {}),
        ),
        run_config=RunConfig(
            name=run_key,
            storage_path=str(cfg.train_storage_effective),
            failure_config=FailureConfig(max_failures=s.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        datasets=datasets or {},
    )


def _trainer_class(base: type) -> type:
    """``base`` with a placement-group cleaner that stops within ~2 s.

    Ray Train's default cleaner polls the controller with a 10 s state-API timeout and waits up to 12 s to stop, so
    every ``fit()`` on a busy 2-core machine ended with a fixed 12 s stall ("Failed to stop PlacementGroupCleaner
    gracefully"). The cleaner still removes the placement group if the controller dies.
    """
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    class Trainer(base):
        def _create_default_callbacks(self):
            return [
                PlacementGroupCleanerCallback(check_interval_s=0.5, get_actor_timeout_s=1.0)
                if isinstance(c, PlacementGroupCleanerCallback)
                else c
                for c in super()._create_default_callbacks()
            ]

    return Trainer


def check_cluster(resources: dict, scaling, data_cpus: float = DATA_PIPELINE_CPUS) -> None:
    """Refuse a job the cluster cannot hold (Ray would wait for resources forever instead of failing)."""
    s = scaling
    need_cpu = s.num_workers * s.cpus_per_worker + data_cpus
    have_cpu = resources.get("CPU", 0)
    if have_cpu < need_cpu:
        raise UsageError(
            f"the Ray cluster has {have_cpu:g} CPUs; {s.num_workers} worker(s) × {s.cpus_per_worker:g} CPU plus "
            f"{data_cpus:g} for the data pipeline need {need_cpu:g}: lower scaling.cpus_per_worker or "
            "num_workers, or add nodes"
        )
    need_gpu = s.num_workers * s.gpus_per_worker
    if need_gpu > resources.get("GPU", 0):
        raise UsageError(f"the Ray cluster has {resources.get('GPU', 0):g} GPUs; the job asks {need_gpu:g}")


def fit_with_progress(trainer, events, total_steps: int, progress: bool, desc: str = "train"):
    """Run ``trainer.fit()`` in a thread; show rank 0's progress events as a bar meanwhile."""
    from tqdm import tqdm

    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except Exception as exc:  # surfaced below as one line
            outcome["error"] = exc

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    last: dict[str, float] = {}
    rates: list[float] = []  # logged steps' training throughput (one step can stall on a checkpoint or the data)
    with tqdm(total=total_steps, desc=desc, unit="step", disable=not progress) as bar:
        while thread.is_alive() or not events.empty():
            try:
                step, metrics = events.get(timeout=0.5)
            except (queue.Empty, Exception):
                continue
            last = metrics
            if "train/tokens_per_s" in metrics:
                rates.append(metrics["train/tokens_per_s"])
            bar.n = step
            bar.set_postfix(loss=f"{metrics.get('train/loss', float('nan')):.3f}", refresh=False)
            bar.refresh()
    thread.join()
    if "error" in outcome:
        raise LakeError(f"training failed: {error_line(outcome['error'])}")
    if rates:
        last = last | {"train/tokens_per_s_median": sorted(rates)[len(rates) // 2]}
    return outcome["result"], last


def error_line(error: BaseException) -> str:
    """One line for a (worker) error: Ray's message ends with the worker's own exception, which says most."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    raised = [line for line in lines if "Error:" in line or "Exception:" in line]
    return raised[-1] if raised else (lines[0] if lines else type(error).__name__)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """A small folder's files (a tokenizer, a checkpoint) as bytes, to ship to workers with the plan."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != ".complete"}


def write_folder(files: dict[str, bytes], prefix: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


def available_memory() -> int:
    """Bytes this machine can still give (MemAvailable; free pages where /proc/meminfo is absent)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# ---- worker ------------------------------------------------------------------------------------------------------
class MetricsLog:
    """Rank 0's MLflow metrics, buffered until a checkpoint holds their step (``flush``), and never re-logging a
    step an earlier attempt already logged (a resumed run continues the same curves)."""

    def __init__(self, mlflow_uri: str, run_id: str, rank: int) -> None:
        from mlflow import MlflowClient

        self.run_id = run_id
        self.client = MlflowClient(mlflow_uri) if rank == 0 else None
        history = self.client.get_metric_history(run_id, "train/loss") if self.client else []
        self.logged_up_to = max((m.step for m in history), default=-1)
        self.buffer: list = []

    def remember(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        if self.client is None or step <= self.logged_up_to:
            return
        now = int(time.time() * 1000)
        self.buffer.extend(Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(float(v)))

    def flush(self) -> None:
        if self.client is None:
            return
        for start in range(0, len(self.buffer), 900):
            self.client.log_batch(self.run_id, metrics=self.buffer[start : start + 900])
        self.buffer.clear()


def report_checkpoint(step: int, metrics: dict[str, float], write: Callable[[Path], None]) -> None:
    """Write this rank's part of the checkpoint with ``write(folder)`` and report it (and the metrics) to Ray
    Train, then inject the test fault if one is armed."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="lake-ckpt-") as tmp:
        write(Path(tmp))
        ray.train.report({"step": step, **metrics}, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    maybe_inject_fault(step)


def maybe_inject_fault(step: int) -> None:
    fault_step = int(os.environ.get(FAULT_STEP_ENV, "0") or 0)
    marker = os.environ.get(FAULT_MARKER_ENV)
    if fault_step and step >= fault_step and marker and not Path(marker).exists():
        Path(marker).write_text(str(step))
        raise RuntimeError(f"injected fault after step {step} ({FAULT_STEP_ENV})")


def restore_checkpoint() -> Path | None:
    """A local copy of Ray Train's latest checkpoint of this run (a restarted or re-run job), if any."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        local = Path(tempfile.mkdtemp(prefix="lake-resume-"))
        shutil.copytree(folder, local, dirs_exist_ok=True)
    return local
