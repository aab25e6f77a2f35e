"""Joining Ray the same way everywhere: a cluster when RAY_ADDRESS is set, else a local one in-process."""

from __future__ import annotations

import logging
import os
import sys
import warnings

from core.config import LakeConfig, use_ray_auth

# the cluster failed, not the run's code: a node or a worker process went away mid-run
LOST_WORKER_ERRORS = ("ActorDiedError", "NodeDiedError", "WorkerCrashedError", "ObjectLostError", "OwnerDiedError")
# Ray Data logs an exception with its whole stack before raising it to us; the CLI reports it in one line
RAISING_LOGGERS = ("ray.data.exceptions", "ray.data._internal.execution.streaming_executor_state")


def _keep_on_loopback() -> None:
    """A private local Ray listens on 127.0.0.1 only. Ray replaces a loopback node address by the machine's
    routable one, and its GCS, raylet, agents and workers then listen on every interface (stack.md §3), unless
    multi-node clusters are off, which a private one-node cluster is. Ray reads that switch from the environment
    once, at import (``lake up`` sets the variable for its processes); here ``ray`` is already imported, so the
    read value is set; the processes Ray starts are given their address on the command line."""
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def init_ray(cfg: LakeConfig, num_cpus: int | None = None) -> None:
    """Connect (once per process) to the configured cluster, or start a quiet local Ray."""
    import ray

    if ray.is_initialized():
        return
    # stack.md §3: Ray 2.60 decides token auth from ~/.ray/auth_token unless told; decide explicitly
    use_ray_auth(cfg)
    # stack.md §3: inside a Ray job driver, ray.init() can invalidate the cwd; keep it and restore it
    here = os.getcwd()
    # "local" starts a private cluster even when another one runs on this machine (address=None would join it)
    address = cfg.ray_address or "local"
    if address and address.startswith("http"):
        address = "auto"  # a Jobs URL: the job driver runs on the cluster, where "auto" finds it
    kwargs = {
        "address": address,
        "ignore_reinit_error": True,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "configure_logging": True,
    }
    if address == "local":
        _keep_on_loopback()
        kwargs |= {
            "num_cpus": num_cpus or os.cpu_count() or 1,
            "include_dashboard": False,
            "object_store_memory": 512 * 1024 * 1024,
        }
    ray.init(**kwargs)
    try:
        os.chdir(here)
    except OSError:
        pass
    # bars on a terminal; in logs and CI Ray would print a progress report every few seconds instead
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty() and os.environ.get("LAKE_PROGRESS", "1") != "0"
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # we turn the bars off on purpose; Ray Data would say so on stderr once per process
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    if not os.environ.get("LAKE_DEBUG"):
        for name in RAISING_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
    # a pool sized for the cluster that gets a single block (one small input) is fine, not worth a warning
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors", category=UserWarning)


def lost_worker(exc: BaseException) -> bool:
    """Whether ``exc`` is Ray saying that a node or worker of the cluster died (a re-run resumes the command)."""
    if "ray" not in sys.modules:
        return False
    from ray import exceptions

    kinds = tuple(getattr(exceptions, name) for name in LOST_WORKER_ERRORS if hasattr(exceptions, name))
    return isinstance(exc, kinds)
