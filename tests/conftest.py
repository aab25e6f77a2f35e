"""Shared fixtures: real shared data, a fresh lake home per test, and a way to run the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("LAKE_DATA_DIR", REPO.parent / "shared" / "data")).resolve()

# variables that would point a test at someone's real cluster, catalog or tracking server
LEAKY_ENV = (
    "RAY_ADDRESS",
    "MLFLOW_TRACKING_URI",
    "LAKE_CONFIG",
    "LAKE_CATALOG_URI",
    "LAKE_WAREHOUSE",
    "LAKE_RAY_DASHBOARD_URL",
)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "MANIFEST.md").is_file():
        pytest.fail(f"shared data not found at {DATA_DIR}; set LAKE_DATA_DIR")
    return DATA_DIR


@pytest.fixture
def lake_env(tmp_path, monkeypatch) -> dict[str, str]:
    """Environment of a fresh, empty lake under tmp_path (also applied to this process)."""
    for name in LEAKY_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LAKE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LAKE_DATA_DIR", str(DATA_DIR))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.chdir(tmp_path)
    return dict(os.environ)


@pytest.fixture
def lake(lake_env):
    from catalog.store import Lakehouse
    from lake.config import load_config

    return Lakehouse.from_config(load_config())


def run_lake(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run the real ``lake`` command line in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "lake", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )
