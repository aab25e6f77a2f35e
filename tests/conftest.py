"""Shared fixtures: real shared data, a fresh lake home per test, and a way to run the real CLI."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


@contextlib.contextmanager
def process_env(env: dict[str, str]):
    """This process's environment set to ``env`` (and earlier tests' leaked MLflow settings removed) for library
    calls made in process, restored afterwards."""
    saved = {k: os.environ.get(k) for k in (*env, *LEAKY_ENV)}
    for key in LEAKY_ENV:
        os.environ.pop(key, None)
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_lake(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run the real ``lake`` command line in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "lake", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )


# ---- post-training: one home for the SFT/reward and the preference/RL tests ----------------------------------
TINY = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "multiple_of": 32}
SFT_FILES = ["sft/alpaca_en_demo.json", "sft/alpaca_zh_demo.json", "sft/glaive_toolcall_en_demo.json",
             "sft/belle/belle_eval_set.json"]  # fmt: skip
PREF_FILES = ["preference/hh_rlhf_helpful_base_test.jsonl.gz", "preference/hh_rlhf_harmless_base_test.jsonl.gz"]


def sft_job(name: str, **extra) -> dict:
    job = {
        "name": name,
        "base": "models:/base/1",
        "data": {"table": "sft.examples", "val_fraction": 0.1, "val_max_examples": 256},
        "template": {"system_prompts": {"open qa": "Answer the question."}},
        "seq_len": 256,
        "packing": True,
        "optim": {"batch_size": 4, "max_steps": 30, "lr": 3e-3, "warmup_steps": 3, "eval_every": 30,
                  "checkpoint_every": 30, "log_every": 5},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1, "torch_threads": 1},
    }  # fmt: skip
    return job | extra


@pytest.fixture(scope="session")
def posttrain_home(tmp_path_factory):
    """A lake home with a tiny tokenizer, base model, SFT model `chat` and reward model `rm` trained on shared data
    through the CLI (the post-training and preference/RL modules build on it)."""
    import ray

    ray.shutdown()
    root = tmp_path_factory.mktemp("posttrain")
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}
    env |= {"LAKE_HOME": str(root / "home"), "LAKE_DATA_DIR": str(DATA_DIR), "RAY_AUTH_MODE": "disabled",
            "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "LAKE_PROGRESS": "0"}  # fmt: skip

    def lake(*args, timeout=900):
        result = run_lake(*args, env=env, cwd=root, timeout=timeout)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    lake("import", "text", str(DATA_DIR / "text/wiki_demo.txt"), str(DATA_DIR / "text/c4_demo.jsonl"),
         "--table", "text.corpus")  # fmt: skip
    lake("import", "sft", *[str(DATA_DIR / f) for f in SFT_FILES], "--table", "sft.examples")
    lake("import", "preference", *[str(DATA_DIR / f) for f in PREF_FILES], "--table", "pref.pairs")
    lake("train", "tokenizer", "--table", "text.corpus", "--vocab-size", "4000", "--name", "tok",
         "--sample-chars", "400000")  # fmt: skip
    base = {
        "name": "base", "tokenizer": "models:/tok/1",
        "data": {"table": "text.corpus", "val_fraction": 0.05, "val_max_tokens": 4096},
        "model": {"size": "tiny", "seq_len": 256, "overrides": TINY},
        "optim": {"batch_size": 4, "max_steps": 20, "lr": 3e-3, "warmup_steps": 2, "eval_every": 20,
                  "checkpoint_every": 20, "log_every": 5},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1},
    }  # fmt: skip
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    lake("train", "pretrain", str(root / "base.yaml"))
    sft = sft_job("chat", mix={"table": "text.corpus", "fraction": 0.1})
    (root / "sft.yaml").write_text(yaml.safe_dump(sft, allow_unicode=True))
    sft_out = json.loads(lake("train", "sft", str(root / "sft.yaml"), "--format", "json").stdout)
    reward = {
        "name": "rm",
        "base": sft_out["model_uri"],
        # helpful-base: its chosen answers differ from the rejected ones in ways a tiny model can learn
        "data": {"table": "pref.pairs", "where": "input_uri LIKE '%helpful%'", "val_fraction": 0.5},
        "seq_len": 224,
        "optim": {"batch_size": 32, "max_steps": 34, "lr": 3e-3, "warmup_steps": 2, "schedule": "constant",
                  "eval_every": 34, "checkpoint_every": 34, "log_every": 4},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1, "torch_threads": 1},
    }  # fmt: skip
    (root / "rm.yaml").write_text(yaml.safe_dump(reward))
    rm_out = json.loads(lake("train", "reward", str(root / "rm.yaml"), "--format", "json").stdout)
    return {"env": env, "root": root, "lake": lake, "sft": sft_out, "rm": rm_out}
