"""DPO, PPO (with and without the ptx term), GRPO and best-of-N end to end on the tiny SFT model and reward model
of the post-training home (real shared data, Ray Train, MLflow, Iceberg). The stages run through the library
calls the CLI makes, in this process, so they share one Ray runtime (the CLI itself is checked by the bad-config,
query and lineage calls). The held-out directions a broken loss would fail:

- DPO raises the chosen-minus-rejected margin and the pairwise accuracy on held-out HH-RLHF pairs, and stores the
  reference log-probs once as the pairs' attribute table;
- PPO and GRPO raise the reward model's mean score on held-out prompts (the BELLE eval set, never trained on)
  while the measured KL stays under its target; PPO-ptx keeps pretraining-text perplexity closer to the SFT
  model's than PPO without it;
- best-of-N: the mean reward of the kept samples rises over rounds;
- `lake lineage` of the PPO model reaches the SFT model, the reward model, the base model, the tokenizer, the
  snapshots and the raw files, and the MLflow UI (in a real headless Chromium) shows the same lineage tags.
"""

from __future__ import annotations

import json
import os

import pytest
import yaml

from conftest import PREF_FILES, SFT_FILES, process_env, run_lake
from listeners import is_loopback, listeners_of, session_pids
from mlflow_ui import headless_chromium, mlflow_ui, save_screenshot, scroll_to, wait_for_text

FAST = {"schedule": "constant", "warmup_steps": 0, "weight_decay": 0.0, "log_every": 4}
SCALING = {"num_workers": 1, "cpus_per_worker": 1, "torch_threads": 2}
KL_TARGET = 6.0
RISE = 0.03  # held-out reward gain required (measured +0.056 to +0.094 with these settings; 0 without learning)


@pytest.fixture(scope="module")
def home(posttrain_home):
    """The post-training home, with this process's environment pointed at it (the stages run in process)."""
    import ray

    with process_env(posttrain_home["env"]):
        from lake.config import load_config

        yield posttrain_home | {"cfg": load_config()}
    ray.shutdown()


def _train(home, stage: str, job: dict) -> dict:
    """``lake train STAGE`` as the CLI runs it: the YAML file loaded and checked, then the stage's driver."""
    import dataclasses

    from training.config import BestOfNConfig, load_yaml

    path = home["root"] / f"{job['name']}.yaml"
    path.write_text(yaml.safe_dump(job, allow_unicode=True))
    if stage == "bon":
        from training.bon import run_best_of_n

        return dataclasses.asdict(run_best_of_n(home["cfg"], load_yaml(path, BestOfNConfig), progress=False))
    from training.posttrain import run_stage
    from training.stages import STAGES

    return dataclasses.asdict(run_stage(home["cfg"], load_yaml(path, STAGES[stage].config), stage, progress=False))


def _rl_job(name: str, **extra) -> dict:
    return {
        "name": name, "base": "models:/chat/1", "reward_model": "models:/rm/1",
        "data": {"table": "sft.examples", "where": "input_uri NOT LIKE '%belle_eval%'"},
        "val_where": "input_uri LIKE '%belle_eval%'", "val_max_prompts": 64,
        "seq_len": 160, "sampling": {"max_new_tokens": 24, "temperature": 1.0},
        # many samples per step (what moves a tiny policy against a weak reward model), one pass each
        "rollout_prompts": 32, "ppo_epochs": 1, "minibatches": 2,
        "optim": {"max_steps": 12, "lr": 3e-4, "eval_every": 12, "checkpoint_every": 12} | FAST,
        "scaling": SCALING,
    } | extra  # fmt: skip


@pytest.fixture(scope="module")
def ppo(home):
    ptx = {"table": "text.corpus", "batch_size": 4, "val_chunks": 32}
    common = {"kl_coef": 0.05, "kl_target": KL_TARGET}
    with_ptx = _train(home, "ppo", _rl_job("ppo-ptx", ptx=ptx | {"coef": 1.0}, **common))
    without = _train(home, "ppo", _rl_job("ppo", ptx=ptx | {"coef": 0.0}, **common))
    return {"ptx": with_ptx, "plain": without}


def test_dpo_raises_the_held_out_margin_and_accuracy(home):
    job = {
        "name": "dpo", "base": "models:/chat/1",
        # half of HH-RLHF helpful-base (by id), a fifth of it held out
        "data": {"table": "pref.pairs", "where": "input_uri LIKE '%helpful%' AND pair_id < '8'", "val_fraction": 0.2,
                 "val_max_examples": 1000},  # every held-out pair
        "seq_len": 224, "loss": "sigmoid", "beta": 0.1,
        "optim": {"batch_size": 16, "max_steps": 12, "lr": 7e-4, "eval_every": 12, "checkpoint_every": 12} | FAST,
        "scaling": SCALING,
    }  # fmt: skip
    out = _train(home, "dpo", job)
    before, after = out["before"], out["after"]
    assert before["val/rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as its reference
    assert after["val/rewards/margins"] > 0.05, after
    assert after["val/rewards/accuracies"] > 0.53, after
    # the reference log-probs are an attribute table of the pairs, one row per encoded pair, reused by later runs
    rows = json.loads(home["lake"]("query", "SELECT count(*) AS n, count(DISTINCT doc_id) AS ids FROM "
                                   "pref.pairs__ref_logps", "--format", "json").stdout)  # fmt: skip
    assert rows[0]["n"] == rows[0]["ids"] == out["examples"] + out["held_out"]
    version = _mlflow(home).get_model_version("dpo", "1").tags
    assert version["lake.reference"] == "models:/chat/1" and version["lake.stage"] == "dpo"
    assert version["lake.ref_logps"].startswith("pref.pairs__ref_logps@")


def test_ppo_raises_held_out_reward_within_the_kl_target(ppo):
    for out in ppo.values():
        assert out["after"]["val/reward"] > out["before"]["val/reward"] + RISE, out
        assert out["before"]["val/kl"] == pytest.approx(0.0, abs=1e-4)
        assert 0 < out["after"]["val/kl"] < KL_TARGET, out


def test_ppo_ptx_keeps_pretraining_perplexity_closer_to_the_sft_model(ppo):
    sft_ppl = ppo["plain"]["before"]["val/ptx_ppl"]
    assert ppo["ptx"]["before"]["val/ptx_ppl"] == pytest.approx(sft_ppl, rel=1e-4)  # same model, same chunks
    drift_ptx = abs(ppo["ptx"]["after"]["val/ptx_ppl"] - sft_ppl)
    drift_plain = abs(ppo["plain"]["after"]["val/ptx_ppl"] - sft_ppl)
    assert drift_ptx < drift_plain, (drift_ptx, drift_plain)
    assert ppo["ptx"]["after"]["val/ptx_ppl"] < ppo["plain"]["after"]["val/ptx_ppl"]


def test_grpo_raises_held_out_reward(home):
    out = _train(home, "grpo", _rl_job("grpo", rollout_prompts=8, group_size=4, beta=0.04))
    assert out["after"]["val/reward"] > out["before"]["val/reward"] + RISE, out
    assert 0 < out["after"]["val/kl"] < KL_TARGET, out


def test_best_of_n_keeps_better_samples_each_round(home):
    job = {
        "name": "bon", "base": "models:/chat/1", "reward_model": "models:/rm/1",
        "data": {"table": "sft.examples", "where": "input_uri NOT LIKE '%belle_eval%'"},
        "table": "sft.best_of_n", "n": 4, "rounds": 2, "max_prompts": 24, "val_fraction": 0.3, "seq_len": 160,
        "sampling": {"max_new_tokens": 24, "temperature": 1.0},
        "optim": {"batch_size": 4, "max_steps": 2, "lr": 1e-3, "eval_every": 2, "checkpoint_every": 2} | FAST,
        "scaling": SCALING,
    }  # fmt: skip
    out = _train(home, "bon", job)
    first, second = out["rounds"]
    assert second["kept_mean_score"] > first["kept_mean_score"], out
    assert second["policy"] == first["model_uri"] == "models:/bon/1" and second["model_uri"] == "models:/bon/2"
    rows = json.loads(home["lake"]("query", "SELECT round, count(*) AS n, min(score) AS low FROM sft.best_of_n "
                                   "GROUP BY round ORDER BY round", "--format", "json").stdout)  # fmt: skip
    assert [r["n"] for r in rows] == [24, 24]
    tags = _mlflow(home).get_model_version("bon", "2").tags
    assert tags["lake.reward_model"] == "models:/rm/1" and tags["lake.parent"] == "models:/bon/1"
    again = _train(home, "bon", job)  # a re-run samples and registers nothing
    assert [r["model_uri"] for r in again["rounds"]] == ["models:/bon/1", "models:/bon/2"]
    assert len(json.loads(home["lake"]("query", "SELECT * FROM sft.best_of_n", "--format", "json").stdout)) == 48


def test_ppo_lineage_reaches_sft_reward_base_tokenizer_snapshots_and_raw_files(home, ppo):
    nodes = json.loads(home["lake"]("lineage", ppo["ptx"]["model_uri"], "--format", "json").stdout)
    models = [n["name"] for n in nodes if n["kind"] == "model"]
    assert models[0] == "ppo-ptx" and {"chat", "rm", "base"} <= set(models), models
    assert "tokenizer" in {n["kind"] for n in nodes}
    tables = {n["table"] for n in nodes if n["kind"] == "dataset_snapshot"}
    assert {"sft.examples", "text.corpus", "pref.pairs"} <= tables, tables
    raw = {os.path.basename(n["uri"]) for n in nodes if n["kind"] == "raw_input"}
    assert {os.path.basename(f) for f in PREF_FILES + SFT_FILES} <= raw


LINEAGE_TAGS = ("lake.parent", "lake.reward_model", "lake.reference", "lake.tokenizer", "lake.dataset.table",
                "lake.dataset.snapshot_id", "lake.stage")  # fmt: skip


def test_mlflow_ui_shows_the_ppo_models_lineage_tags(home, ppo):
    from training.registry import parse_model_uri

    name, version, _ = parse_model_uri(ppo["ptx"]["model_uri"])
    tags = _mlflow(home).get_model_version(name, str(version)).tags
    assert tags["lake.reward_model"] == "models:/rm/1" and tags["lake.reference"] == "models:/chat/1", tags
    assert all(tags.get(key) for key in LINEAGE_TAGS), tags
    backend = f"sqlite:///{home['env']['LAKE_HOME']}/mlflow.db"
    with (
        mlflow_ui(backend, home["env"], home["root"] / "mlflow-ui.log") as server,
        headless_chromium() as browser,  # starts while the server does
    ):
        browser.get(f"{server.wait_ready()}/#/models/{name}/versions/{version}")
        try:  # every tag's name, and the lineage tags' values
            wait_for_text(browser, [f"Version {version}", *tags, *(tags[key] for key in LINEAGE_TAGS)])
        finally:
            scroll_to(browser, "lake.reward_model")
            save_screenshot(browser, f"mlflow-ui-{name}-v{version}.png")


def test_the_in_process_ray_listens_on_loopback_only(home, ppo):
    """The private Ray the stages above started in this process (as every `lake` command without a cluster does):
    its GCS, raylet, agents and workers, and this driver, listen on 127.0.0.1 only."""
    import ray

    assert ray.is_initialized()
    listeners = listeners_of(session_pids({os.getpid()}))
    assert len({pid for pid, _ in listeners}) >= 3, listeners
    exposed = [(pid, address) for pid, address in listeners if not is_loopback(address)]
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_bad_rl_jobs_are_one_line_exit_2(home):
    path = home["root"] / "bad-ppo.yaml"
    path.write_text(yaml.safe_dump(_rl_job("bad", reward_model="models:/chat/1")))
    result = run_lake("train", "ppo", str(path), env=home["env"], cwd=home["root"])
    assert result.returncode == 2 and "not a reward model" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _mlflow(home):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{home['env']['LAKE_HOME']}/mlflow.db")
