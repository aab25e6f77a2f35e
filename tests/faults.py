"""Helpers of the fault tests: start a real `lake` process, wait for its progress, kill it or a Ray node, and
compare the tables it leaves with an uninterrupted run's."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from conftest import DATA_DIR, LEAKY_ENV, REPO

# columns that differ between two runs of the same input (when, which run, how long) or name the table itself
VOLATILE = {"run_id", "ingested_at", "extract_seconds", "target_table", "labelled_at", "source_snapshot_id"}
# a recipe whose operators are quick to load: the faults under test are in committing, not in the operators
RECIPE = """\
name: faults
languages: null
operators:
  - extract_main_text: {}
  - line_cleanup: {}
hard_filters:
  - {name: non_text_payload, when: "coalesce(content_type, '') NOT IN ('text/html', 'text/plain')"}
  - {name: empty_extraction, when: "coalesce(trim(text), '') = ''"}
"""
WARCS = [str(DATA_DIR / "warc" / f"wget-2024-en-dolma-sample-000{i}.warc.gz") for i in (0, 1)]


def lake_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}
    return env | {"LAKE_HOME": str(home), "LAKE_DATA_DIR": str(DATA_DIR), "RAY_AUTH_MODE": "disabled",
                  "MLFLOW_DISABLE_TELEMETRY": "true", "LAKE_PROGRESS": "0"} | extra  # fmt: skip


def start(*args: str, env: dict[str, str]) -> subprocess.Popen:
    """A `lake` command in its own process group (the group is what a kill takes down)."""
    return subprocess.Popen(
        [sys.executable, "-m", "lake", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        raise AssertionError(f"hung for {timeout}s: {' '.join(proc.args[3:])}\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    """Poll ``ready`` until it holds; fail if ``proc`` ends first (the fault would come too late)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"the run ended (rc {proc.returncode}) before {what}: {err[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout}s")
        time.sleep(0.05)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and everything in its process group (its local Ray follows it)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def checkpoints(env: dict[str, str], name: str) -> list[Path]:
    """A training job's checkpoints in its lake home."""
    return sorted(Path(env["LAKE_HOME"], "train").glob(f"{name}-*/checkpoint_*"))


def kill_at_first_checkpoint(*args: str, name: str, env: dict[str, str]) -> None:
    """Run ``lake train …`` for job ``name`` and SIGKILL it (driver and local Ray) once its first checkpoint lands."""
    proc = start(*args, env=env)
    wait_until(lambda: checkpoints(env, name), proc, "the first checkpoint", timeout=600)
    kill_group(proc)


def run_rows(lake, command: str, target_table: str) -> list[dict]:
    if not lake.exists("lake.runs"):
        return []
    rows = lake.read("lake.runs").to_pylist()
    return [r for r in rows if r["command"] == command and r["target_table"] == target_table]


def committed(lake, table: str) -> bool:
    return lake.exists(table) and lake.resolve_snapshot(table, None) is not None


def table_digest(lake, table: str, drop: set[str] = VOLATILE) -> tuple[int, str]:
    """Row count and a content hash that ignores row order and the columns that differ between runs."""
    rows = lake.read(table).to_pylist()
    lines = sorted(json.dumps({k: v for k, v in r.items() if k not in drop}, sort_keys=True, default=str) for r in rows)
    return len(rows), hashlib.sha256("\n".join(lines).encode()).hexdigest()


def duplicate_keys(lake, table: str, key: tuple[str, ...] = ("input_digest", "record_key")) -> int:
    rows = lake.read(table, columns=key).to_pylist()
    return len(rows) - len({tuple(r[k] for k in key) for r in rows})


def one_line_error(result: subprocess.CompletedProcess) -> bool:
    """A failed run says why in one `lake: ...` line, with no traceback (progress bars and Ray's one-line log
    records may stand beside it)."""
    said = [line for line in result.stderr.splitlines() if line.startswith("lake: ")]
    return result.returncode in (1, 2) and len(said) == 1 and "Traceback" not in result.stderr


# ---- a worker node of a `lake up` cluster ---------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def worker_raylet(home: Path, node: int = 1, timeout: float = 120) -> int:
    """Pid of the raylet of `lake up`'s worker node ``node`` (a child of the pid-file's `ray start --block`).

    Waits for it: a `lake up` that restarts a node killed moments ago can return before the new raylet runs, as
    the cluster still counts the dead node as alive until its heartbeats time out."""
    deadline = time.monotonic() + timeout
    while True:
        starter = int((home / "run" / f"ray-worker-{node}.pid").read_text())
        found = [p for p in _children(starter) if _cmdline(p).split(" ", 1)[0].endswith("/raylet")]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no raylet under ray-worker-{node} (pid {starter}) in {timeout}s"
        time.sleep(0.5)


def runs_on(raylet: int, actor_class: str) -> bool:
    """Whether a Ray worker of this raylet runs an actor of ``actor_class`` (Ray names the process after it)."""
    return any(actor_class in _cmdline(p) for p in _children(raylet))
