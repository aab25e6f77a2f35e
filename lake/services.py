"""The local services behind ``lake up``: a Ray cluster and an MLflow tracking server.

By default the cluster is one node and every listener is on 127.0.0.1. Worker nodes (``[ray] worker_nodes``) or a
routable ``[ray] host`` open it: Ray then listens on the machine's address, so token authentication is forced on,
with a token of this lake home (``LakeConfig.ray_auth_token_path``), never the machine-wide ``~/.ray`` one.

Each service runs in the foreground of its own process group (``ray start --block``, ``mlflow server``) so that
its pid file under ``LAKE_HOME/run`` names the whole group and ``lake down`` can stop exactly what ``lake up``
started, leaving other Ray or MLflow processes on the machine alone. Logs go to ``LAKE_HOME/logs``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from core.config import _ensure_token, use_ray_auth  # noqa: F401  (re-exported)
from lake.config import LakeConfig
from lake.errors import LakeError, UsageError

START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 8  # Ray's head takes >20 s to honour SIGTERM; its state is disposable


@dataclass(frozen=True)
class Service:
    name: str
    command: list[str]
    # URL whose 200 answer means "ready" (None: wait for the cluster to report the node instead)
    health_url: str | None = None


def _bin(cfg_exe: str) -> str:
    """An executable of this environment (the venv the lake runs from), falling back to PATH."""
    here = Path(sys.executable).parent / cfg_exe
    return str(here) if here.exists() else cfg_exe


def services(cfg: LakeConfig) -> list[Service]:
    node_memory = str(2 * cfg.ray_object_store_mb * 1024 * 1024)
    object_store = str(cfg.ray_object_store_mb * 1024 * 1024)
    common = [
        "--num-cpus",
        str(cfg.ray_cpus_per_node),
        "--object-store-memory",
        object_store,
        "--memory",
        node_memory,
        "--block",
        "--disable-usage-stats",
    ]

    def agent_ports(node: int) -> list[str]:
        # Ray's fixed default agent port (52365) belongs to whichever Ray started first on this machine, and a
        # head without its agent refuses jobs ("No available agent"): give each node its own, next to ours
        base = cfg.ray_dashboard_port + 10 + 10 * node
        return [
            "--dashboard-agent-listen-port",
            str(base),
            "--dashboard-agent-grpc-port",
            str(base + 1),
            "--runtime-env-agent-port",
            str(base + 2),
            "--metrics-export-port",
            str(base + 3),
        ]

    head = Service(
        "ray-head",
        [
            _bin("ray"),
            "start",
            "--head",
            # in an open cluster Ray replaces a loopback address by the routable one
            "--node-ip-address",
            cfg.ray_host,
            "--port",
            str(cfg.ray_port),
            # Ray's default (10001) would collide with any other head on this machine
            "--ray-client-server-port",
            str(cfg.ray_dashboard_port + 9),
            "--include-dashboard",
            "true",
            "--dashboard-host",
            cfg.ray_host,
            "--dashboard-port",
            str(cfg.ray_dashboard_port),
            *agent_ports(0),
            *common,
        ],
        health_url=f"{_dashboard(cfg)}/api/version",
    )
    workers = [
        Service(
            f"ray-worker-{i}",
            [_bin("ray"), "start", "--address", head_address(cfg), *agent_ports(i), *common],
        )
        for i in range(1, cfg.ray_worker_nodes + 1)
    ]
    mlflow = Service(
        "mlflow",
        [
            _bin("mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{cfg.home / 'mlflow.db'}",
            "--serve-artifacts",
            "--artifacts-destination",
            str(cfg.mlflow_artifacts_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(cfg.mlflow_port),
            "--workers",
            "1",
        ],
        health_url=f"http://127.0.0.1:{cfg.mlflow_port}/health",
    )
    return [head, *workers, mlflow]


def head_address(cfg: LakeConfig) -> str:
    return f"{cfg.ray_host}:{cfg.ray_port}"


def _pid_file(cfg: LakeConfig, name: str) -> Path:
    return cfg.run_dir / f"{name}.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours still "exists"; reap it if we can
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def running_pid(cfg: LakeConfig, name: str) -> int | None:
    path = _pid_file(cfg, name)
    if not path.exists():
        return None
    try:
        pid = int(path.read_text().strip())
    except ValueError:
        return None
    return pid if _alive(pid) else None


def _http_get(url: str, cfg: LakeConfig, timeout: float = 2.0) -> tuple[int, bytes] | None:
    """Status and body of a GET to one of our services (None: nothing answers)."""
    request = urllib.request.Request(url)
    if url.startswith(_dashboard(cfg)) and cfg.ray_auth_mode_effective == "token":
        request.add_header("Authorization", f"Bearer {cfg.ray_auth_token_path.read_text().strip()}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - our own services
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return None


def _http_ok(url: str, cfg: LakeConfig) -> bool:
    answer = _http_get(url, cfg)
    return answer is not None and answer[0] == 200


def _dashboard(cfg: LakeConfig) -> str:
    return f"http://{cfg.ray_host}:{cfg.ray_dashboard_port}"


def service_env(cfg: LakeConfig) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    use_ray_auth(cfg, env)
    if not cfg.ray_open:
        # keeps Ray from replacing 127.0.0.1 by the routable address (and binding GCS on *); it also refuses a
        # second node, which a loopback cluster has none of
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.pop("RAY_ADDRESS", None)  # the head must not try to join another cluster
    return env


def _ray_nodes_alive(cfg: LakeConfig) -> int:
    """Alive nodes as the dashboard reports them (0 when it does not answer)."""
    import json

    answer = _http_get(f"{_dashboard(cfg)}/nodes?view=summary", cfg, timeout=3)
    try:
        data = json.loads(answer[1]) if answer and answer[0] == 200 else {}
    except ValueError:
        return 0
    summary = data.get("data", {}).get("summary", [])
    return sum(1 for node in summary if node.get("raylet", {}).get("state") == "ALIVE")


def _wait(predicate, what: str, pid: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if predicate():
            return
        if not _alive(pid):
            raise LakeError(f"{what} exited during start-up; see {log}")
        time.sleep(0.5)
    raise LakeError(f"{what} did not become ready in {START_TIMEOUT_S}s; see {log}")


def up(cfg: LakeConfig, echo=print) -> None:
    """Start every service that is not already running; wait until each is ready."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    cfg.log_dir.mkdir(parents=True, exist_ok=True)
    cfg.mlflow_artifacts_dir.mkdir(parents=True, exist_ok=True)
    env = service_env(cfg)
    expected_nodes = 0
    for svc in services(cfg):
        if svc.name.startswith("ray"):
            expected_nodes += 1
        pid = running_pid(cfg, svc.name)
        if pid is not None:
            echo(f"{svc.name}: already running (pid {pid})")
            continue
        if svc.health_url and _http_get(svc.health_url, cfg) is not None:
            raise UsageError(f"{svc.name}: port of {svc.health_url} is taken by a process lake did not start")
        log = cfg.log_dir / f"{svc.name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                svc.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cfg.home,
                start_new_session=True,
            )
        _pid_file(cfg, svc.name).write_text(f"{proc.pid}\n")
        if svc.health_url:
            _wait(lambda url=svc.health_url: _http_ok(url, cfg), svc.name, proc.pid, log)
        if svc.name.startswith("ray"):
            _wait(lambda n=expected_nodes: _ray_nodes_alive(cfg) >= n, svc.name, proc.pid, log)
        echo(f"{svc.name}: started (pid {proc.pid}, log {log})")


def down(cfg: LakeConfig, echo=print) -> None:
    """Stop what ``up`` started: workers first, then the head, then MLflow."""
    order = [s.name for s in services(cfg) if s.name.startswith("ray-worker")] + ["ray-head", "mlflow"]
    for name in order:
        pid = running_pid(cfg, name)
        if pid is None:
            _pid_file(cfg, name).unlink(missing_ok=True)
            continue
        _stop_group(pid)
        _pid_file(cfg, name).unlink(missing_ok=True)
        echo(f"{name}: stopped (pid {pid})")


def _stop_group(pid: int) -> None:
    for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _group_alive(pid):
                return
            time.sleep(0.3)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    _alive(pgid)  # reap the leader if it is our child
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def status(cfg: LakeConfig) -> list[dict]:
    rows = []
    for svc in services(cfg):
        pid = running_pid(cfg, svc.name)
        ready = bool(pid) and (_http_ok(svc.health_url, cfg) if svc.health_url else True)
        row = {"service": svc.name, "pid": pid, "state": "running" if ready else ("starting" if pid else "stopped")}
        if svc.name == "ray-head":
            row["address"] = head_address(cfg)
            row["endpoint"] = cfg.dashboard_url_effective
            row["detail"] = f"{_ray_nodes_alive(cfg)} node(s) alive" if ready else ""
        elif svc.name == "mlflow":
            row["endpoint"] = f"http://127.0.0.1:{cfg.mlflow_port}"
        rows.append(row)
    return rows
