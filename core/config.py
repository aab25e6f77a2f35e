"""One typed configuration: embedded defaults < lake.toml < environment.

Everything that is state lives under ``home`` (``LAKE_HOME``, default ``./lakehouse``): the SQLite Iceberg
catalog, the warehouse, MLflow's database and artifacts, service pid files and logs. Pointing the same commands at
a cluster is a matter of setting ``RAY_ADDRESS``, ``LAKE_CATALOG_URI`` (REST or Postgres), ``LAKE_WAREHOUSE``
(``s3://…``) and ``MLFLOW_TRACKING_URI``; no code changes.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import UsageError

CONFIG_FILE_ENV = "LAKE_CONFIG"
DEFAULT_CONFIG_FILE = "lake.toml"
# the shared data beside a checkout (models, blocklists, lexicons): nothing is downloaded at run time
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@dataclass(frozen=True, kw_only=True)
class LakeConfig:
    home: Path = Path("lakehouse")
    data_dir: Path = DEFAULT_DATA_DIR
    catalog_name: str = "lake"
    # sqlite:///… (embedded), postgresql+psycopg2://… (SQL catalog) or http(s)://… (REST catalog)
    catalog_uri: str = ""
    warehouse: str = ""
    # extra pyiceberg catalog properties (credentials, s3.endpoint, …) from lake.toml [catalog.properties]
    catalog_properties: dict[str, str] = field(default_factory=dict)
    ray_address: str = ""
    ray_dashboard_url: str = ""
    ray_port: int = 6390
    ray_dashboard_port: int = 8265
    # `lake up` starts one node bound to loopback; worker nodes or a routable host open the cluster (see ray_open)
    ray_worker_nodes: int = 0
    ray_host: str = "127.0.0.1"
    ray_cpus_per_node: int = 2
    ray_object_store_mb: int = 1024
    # for a loopback cluster; an open one always uses token auth (ray_auth_mode_effective)
    ray_auth_mode: str = "disabled"
    mlflow_tracking_uri: str = ""
    mlflow_port: int = 5055
    # Ray Train run storage (checkpoints); a path all nodes see, or s3://… on a cluster
    train_storage: str = ""
    # where this configuration came from (file path or "defaults"); informational
    source: str = "defaults"

    # ---- derived locations -------------------------------------------------------------------------------
    @property
    def catalog_uri_effective(self) -> str:
        return self.catalog_uri or f"sqlite:///{self.home / 'catalog.db'}"

    @property
    def warehouse_effective(self) -> str:
        return self.warehouse or (self.home / "warehouse").as_uri()

    @property
    def mlflow_uri_effective(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def train_storage_effective(self) -> str:
        return self.train_storage or str(self.home / "train")

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def dashboard_url_effective(self) -> str:
        if self.ray_dashboard_url:
            return self.ray_dashboard_url
        if self.ray_address.startswith("http"):
            return self.ray_address
        return f"http://{self.ray_host}:{self.ray_dashboard_port}"

    @property
    def ray_open(self) -> bool:
        """Whether `lake up` starts a cluster reachable beyond loopback: Ray refuses extra nodes on a loopback-only
        head, and once it allows them it binds the machine's routable address."""
        return self.ray_worker_nodes > 0 or not ipaddress.ip_address(self.ray_host).is_loopback

    @property
    def ray_auth_mode_effective(self) -> str:
        return "token" if self.ray_open else self.ray_auth_mode

    @property
    def ray_auth_token_path(self) -> Path:
        # our own token: Ray's default (~/.ray/auth_token) is shared by every Ray on the machine
        return self.run_dir / "ray_auth_token"

    def ray_auth_env(self) -> dict[str, str]:
        """What every Ray process and client of this configuration needs to agree on authentication."""
        env = {"RAY_AUTH_MODE": self.ray_auth_mode_effective}
        if env["RAY_AUTH_MODE"] == "token":
            env["RAY_AUTH_TOKEN_PATH"] = str(self.ray_auth_token_path)
        return env

    @property
    def is_embedded_catalog(self) -> bool:
        return self.catalog_uri_effective.startswith("sqlite")

    def catalog_kwargs(self) -> dict[str, str]:
        """Keyword arguments for ``pyiceberg.catalog.load_catalog`` (also what Ray Data's Iceberg IO takes)."""
        uri = self.catalog_uri_effective
        kwargs: dict[str, str] = {"uri": uri, "warehouse": self.warehouse_effective}
        kwargs["type"] = "rest" if uri.startswith(("http://", "https://")) else "sql"
        kwargs.update(self.catalog_properties)
        return kwargs

    def service_env(self) -> dict[str, str]:
        """Environment that makes another process (a Ray job, a test subprocess) see this configuration."""
        env = {
            "LAKE_HOME": str(self.home),
            "LAKE_DATA_DIR": str(self.data_dir),
            "LAKE_CATALOG_URI": self.catalog_uri_effective,
            "LAKE_WAREHOUSE": self.warehouse_effective,
            "MLFLOW_TRACKING_URI": self.mlflow_uri_effective,
            "LAKE_TRAIN_STORAGE": self.train_storage_effective,
        } | self.ray_auth_env()
        return env

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        out["catalog_uri"] = self.catalog_uri_effective
        out["warehouse"] = self.warehouse_effective
        out["mlflow_tracking_uri"] = self.mlflow_uri_effective
        out["ray_dashboard_url"] = self.dashboard_url_effective
        return out


# environment variable -> config field; the cluster-facing ones use the names their tools already read
ENV_VARS: dict[str, str] = {
    "LAKE_HOME": "home",
    "LAKE_DATA_DIR": "data_dir",
    "LAKE_CATALOG_NAME": "catalog_name",
    "LAKE_CATALOG_URI": "catalog_uri",
    "LAKE_WAREHOUSE": "warehouse",
    "RAY_ADDRESS": "ray_address",
    "LAKE_RAY_DASHBOARD_URL": "ray_dashboard_url",
    "LAKE_RAY_PORT": "ray_port",
    "LAKE_RAY_DASHBOARD_PORT": "ray_dashboard_port",
    "LAKE_RAY_WORKER_NODES": "ray_worker_nodes",
    "LAKE_RAY_HOST": "ray_host",
    "LAKE_RAY_CPUS_PER_NODE": "ray_cpus_per_node",
    "LAKE_RAY_OBJECT_STORE_MB": "ray_object_store_mb",
    "RAY_AUTH_MODE": "ray_auth_mode",
    "MLFLOW_TRACKING_URI": "mlflow_tracking_uri",
    "LAKE_MLFLOW_PORT": "mlflow_port",
    "LAKE_TRAIN_STORAGE": "train_storage",
}

# lake.toml sections -> config fields (a flat [lake] table is accepted too)
TOML_KEYS: dict[tuple[str, str], str] = {
    ("lake", "home"): "home",
    ("lake", "data_dir"): "data_dir",
    ("catalog", "name"): "catalog_name",
    ("catalog", "uri"): "catalog_uri",
    ("catalog", "warehouse"): "warehouse",
    ("ray", "address"): "ray_address",
    ("ray", "dashboard_url"): "ray_dashboard_url",
    ("ray", "port"): "ray_port",
    ("ray", "dashboard_port"): "ray_dashboard_port",
    ("ray", "worker_nodes"): "ray_worker_nodes",
    ("ray", "host"): "ray_host",
    ("ray", "cpus_per_node"): "ray_cpus_per_node",
    ("ray", "object_store_mb"): "ray_object_store_mb",
    ("ray", "auth_mode"): "ray_auth_mode",
    ("mlflow", "tracking_uri"): "mlflow_tracking_uri",
    ("mlflow", "port"): "mlflow_port",
    ("train", "storage"): "train_storage",
}


def _coerce(name: str, value: Any) -> Any:
    ftype = {f.name: f.type for f in dataclasses.fields(LakeConfig)}[name]
    try:
        if ftype == "Path":
            return Path(str(value)).expanduser()
        if ftype == "int":
            return int(value)
    except ValueError as exc:
        raise UsageError(f"config {name}: expected a number, got {value!r}") from exc
    return str(value) if ftype == "str" else value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc
    values: dict[str, Any] = {}
    for (section, key), name in TOML_KEYS.items():
        table = doc.get(section, {})
        if isinstance(table, dict) and key in table:
            values[name] = table[key]
    props = doc.get("catalog", {}).get("properties", {})
    if props:
        values["catalog_properties"] = {str(k): str(v) for k, v in props.items()}
    return values


def load_config(config_file: str | Path | None = None, env: dict[str, str] | None = None) -> LakeConfig:
    """Resolve the effective configuration.

    ``config_file`` (or ``$LAKE_CONFIG``, or ``./lake.toml`` when present) is read first; environment variables
    override it. Relative paths in a config file are relative to that file's folder.
    """
    env = dict(os.environ if env is None else env)
    values: dict[str, Any] = {}
    path = Path(config_file or env.get(CONFIG_FILE_ENV) or DEFAULT_CONFIG_FILE)
    explicit = bool(config_file or env.get(CONFIG_FILE_ENV))
    if path.is_file():
        base = path.resolve().parent
        for name, value in _read_toml(path).items():
            if name in ("home", "data_dir") and not Path(str(value)).expanduser().is_absolute():
                value = base / str(value)
            values[name] = value
        values["source"] = str(path)
    elif explicit:
        raise UsageError(f"config file {path} does not exist")
    for var, name in ENV_VARS.items():
        if env.get(var):
            values[name] = env[var]
    coerced = {k: (_coerce(k, v) if k not in ("catalog_properties", "source") else v) for k, v in values.items()}
    cfg = LakeConfig(**coerced)
    try:
        ipaddress.ip_address(cfg.ray_host)
    except ValueError:
        raise UsageError(f"config ray_host: expected an IP address of this machine, got {cfg.ray_host!r}") from None
    if cfg.ray_worker_nodes < 0:
        raise UsageError(f"config ray_worker_nodes: expected 0 or more, got {cfg.ray_worker_nodes}")
    # absolute paths so that subprocesses and Ray jobs (which run elsewhere) see the same state
    return dataclasses.replace(cfg, home=cfg.home.resolve(), data_dir=cfg.data_dir.resolve())


def data_dir() -> Path:
    """The shared data root (models, blocklists, lexicons) of the effective configuration: ``LAKE_DATA_DIR``,
    else ``data_dir`` of ``lake.toml`` (or ``$LAKE_CONFIG``), else the ``shared/data`` beside the checkout. The one
    reader of this setting: operators resolve their default resource paths through it."""
    return load_config().data_dir


def publish(cfg: LakeConfig) -> None:
    """Make ``cfg``'s process-wide settings visible to code that reads the configuration again (operators
    resolving ``data_dir``) and to the processes this one starts (local Ray workers inherit the environment),
    also when ``cfg`` came from a ``--config`` file they would not find themselves."""
    os.environ["LAKE_DATA_DIR"] = str(cfg.data_dir)
    use_ray_auth(cfg)


def use_ray_auth(cfg: LakeConfig, environ: dict | os._Environ = os.environ) -> None:
    """Put this configuration's Ray authentication into ``environ``, creating the token when it is needed: with
    RAY_AUTH_MODE=token and no token, Ray would write one to ~/.ray."""
    auth = cfg.ray_auth_env()
    if "RAY_AUTH_TOKEN_PATH" in auth:
        _ensure_token(cfg.ray_auth_token_path)
    environ.update(auth)


def _ensure_token(path: Path) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))
    try:
        os.link(tmp, path)  # atomic, and the first of two racing processes wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
