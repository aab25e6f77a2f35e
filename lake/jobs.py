"""``lake submit -- lake …``: run a lake command as a Ray job, stream its logs, return its status."""

from __future__ import annotations

import asyncio
import shlex
import time
from pathlib import Path

from lake.config import LakeConfig
from lake.errors import LakeError, UsageError

# never shipped with the working directory: state, environments, caches, model files
WORKING_DIR_EXCLUDES = [
    ".venv",
    "lakehouse",
    ".git",
    "**/__pycache__",
    "*.pt",
    "*.safetensors",
    "*.bin",
    ".pytest_cache",
    ".ruff_cache",
    "mlruns",
    "*.egg-info",
]
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
    excludes = list(WORKING_DIR_EXCLUDES)
    try:
        excludes.append(str(cfg.home.relative_to(working_dir.resolve())))
    except ValueError:
        pass
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
