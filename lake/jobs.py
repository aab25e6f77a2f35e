"""``lake submit -- lake …``: run a lake command as a Ray job, stream its logs, return its status."""

from __future__ import annotations

import asyncio
import fnmatch
import os
import shlex
import time
from pathlib import Path

from lake.config import LakeConfig
from lake.errors import LakeError, UsageError

# Never shipped with the working directory (Ray also applies its .gitignore and .rayignore): state, environments,
# caches, demo and benchmark homes, data and model files. A job needs code, config and recipes; the inputs named on
# its command line are passed as absolute paths (or URLs) and read where they are.
WORKING_DIR_EXCLUDES = [
    ".venv",
    "lakehouse",
    ".git",
    ".demo",
    ".bench",
    "**/__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    "mlruns",
    "mlartifacts",
    "*.egg-info",
    *(f"*.{ext}" for ext in ("pt", "pth", "ckpt", "safetensors", "bin", "ftz", "gguf", "onnx", "model")),
    *(f"*.{ext}" for ext in ("gz", "zst", "bz2", "xz", "zip", "tar", "warc", "wet", "parquet", "arrow", "db")),
]
# anything else this big is data, not what a job runs: left out too
MAX_UPLOAD_FILE_BYTES = 1024 * 1024
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def absolutize(args: list[str], cwd: Path) -> list[str]:
    """Paths that exist here become absolute: the job runs in a copy of the working directory elsewhere."""
    out = []
    for arg in args:
        candidate = cwd / arg
        out.append(
            str(candidate.resolve()) if not arg.startswith("-") and "://" not in arg and candidate.exists() else arg
        )
    return out


def submit(cfg: LakeConfig, args: list[str], working_dir: Path, echo=print) -> tuple[str, int]:
    """Submit ``args`` (starting with ``lake``) and follow it to the end; returns the terminal status and the
    job's exit code (0 when it succeeded, 1 when it ended without one)."""
    if not args or args[0] != "lake":
        raise UsageError("lake submit runs lake commands: lake submit -- lake <command> ...")
    from ray.job_submission import JobSubmissionClient

    entrypoint = shlex.join([args[0], *absolutize(args[1:], working_dir)])
    excludes = upload_excludes(cfg, working_dir)
    try:
        client = JobSubmissionClient(cfg.dashboard_url_effective)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise LakeError(
            f"no Ray cluster at {cfg.dashboard_url_effective} ({exc.__class__.__name__}); "
            "start one with `lake up` or set RAY_ADDRESS"
        ) from None
    runtime_env = {"working_dir": str(working_dir), "excludes": excludes, "env_vars": cfg.service_env()}
    job_id = _submit_with_retry(client, entrypoint, runtime_env)
    echo(f"submitted {job_id} to {cfg.dashboard_url_effective}: {entrypoint}")
    try:
        asyncio.run(_stream(client, job_id, echo))
    except Exception:  # log streaming is best effort; the status below is what counts
        pass
    status = _wait_terminal(client, job_id)
    if status == "SUCCEEDED":
        return status, 0
    info = client.get_job_info(job_id)
    echo(f"job {job_id} {status}: {(info.message or '').strip()[:300]}")
    return status, info.driver_exit_code or 1


def upload_excludes(cfg: LakeConfig, working_dir: Path) -> list[str]:
    """Ray ``excludes`` for the working directory: the fixed patterns, the lake home, and every other file over
    ``MAX_UPLOAD_FILE_BYTES`` (by its path, anchored at the working directory)."""
    excludes = list(WORKING_DIR_EXCLUDES)
    root = working_dir.resolve()
    try:
        excludes.append(f"/{cfg.home.relative_to(root)}")
    except ValueError:
        pass

    def excluded(name: str) -> bool:
        return any(fnmatch.fnmatch(name, p.removeprefix("**/")) for p in WORKING_DIR_EXCLUDES)

    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not excluded(d) and Path(folder) / d != cfg.home]
        for name in files:
            path = Path(folder) / name
            if not excluded(name) and path.is_file() and path.stat().st_size > MAX_UPLOAD_FILE_BYTES:
                excludes.append(f"/{path.relative_to(root).as_posix()}")
    return excludes


def _submit_with_retry(client, entrypoint: str, runtime_env: dict, wait_s: float = 60) -> str:
    """Submit, waiting out a cluster whose job agent is still starting (it answers 500 "No available agent")."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2)


async def _stream(client, job_id: str, echo) -> None:
    async for chunk in client.tail_job_logs(job_id):
        echo(chunk.rstrip("\n"))


def _wait_terminal(client, job_id: str, timeout_s: float = 3600) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL:
            return status
        time.sleep(0.5)
    return "TIMEOUT"
