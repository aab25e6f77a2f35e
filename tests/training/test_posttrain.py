"""SFT and the reward model end to end through the real CLI, on real shared data: import chat examples,
preference pairs and text, train a tokenizer, pretrain a tiny base, fine-tune it (SFT) and train a reward model
on it, then score pairs with `lake eval` and walk the lineage back to the raw files.

One lake home for the module: the steps build on each other the way a user's session would.
"""

from __future__ import annotations

import json
import os

import pytest
import yaml

from conftest import PREF_FILES, SFT_FILES, run_lake, sft_job


@pytest.fixture(scope="module")
def home(posttrain_home):
    return posttrain_home


def _mlflow(home):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{home['env']['LAKE_HOME']}/mlflow.db")


def test_sft_lowers_the_held_out_answer_loss(home):
    out = home["sft"]
    assert out["held_out"] >= 100 and out["examples"] > 1000
    assert out["after"]["val/loss"] < out["before"]["val/loss"] - 0.3, out


def test_bad_examples_are_skipped_and_counted_with_a_reason(home):
    out = home["sft"]
    assert out["skipped"].get("too_long", 0) > 0, out["skipped"]  # long ShareGPT/BELLE conversations
    version = _mlflow(home).get_model_version("chat", "1")
    assert json.loads(version.tags["lake.skipped"]) == out["skipped"]
    run = _mlflow(home).get_run(version.run_id)
    assert int(run.data.params["skipped.too_long"]) == out["skipped"]["too_long"]


def test_sft_model_is_registered_with_parent_snapshot_and_template(home):
    version = _mlflow(home).get_model_version("chat", "1")
    tags = version.tags
    assert tags["lake.parent"] == "models:/base/1" and tags["lake.stage"] == "sft"
    assert tags["lake.tokenizer"] == "models:/tok/1"
    assert [d["table"] for d in json.loads(tags["lake.datasets"])] == ["sft.examples", "text.corpus"]
    assert json.loads(tags["lake.template"])["style"] == "roles"
    artifacts = {a.path for a in _mlflow(home).list_artifacts(version.run_id)}
    assert "loss.png" in artifacts


def test_reward_model_beats_chance_on_held_out_pairs(home):
    out = home["rm"]
    after = out["after"]
    assert out["held_out"] >= 1000, out
    assert after["val/accuracy_ci_low"] > 0.5, after
    assert out["skipped"].get("too_long", 0) > 0


def test_lake_eval_scores_a_preference_table(home):
    result = home["lake"]("eval", home["rm"]["model_uri"], "--suite", "pairs", "--pairs-table", "pref.pairs",
                          "--where", "input_uri LIKE '%helpful%'", "--format", "json")  # fmt: skip
    pairs = json.loads(result.stdout)["pairs"]
    assert pairs["n"] > 2000 and 0 < pairs["ci95"][0] < pairs["accuracy"] < pairs["ci95"][1] < 1
    assert isinstance(pairs["mean_margin"], float)
    bad = run_lake("eval", "models:/chat/1", "--suite", "pairs", "--pairs-table", "pref.pairs", env=home["env"],
                   cwd=home["root"])  # fmt: skip
    assert bad.returncode == 2 and "not a reward model" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_reward_lineage_reaches_sft_base_tokenizer_snapshots_and_raw_files(home):
    nodes = json.loads(home["lake"]("lineage", home["rm"]["model_uri"], "--format", "json").stdout)
    models = [n["name"] for n in nodes if n["kind"] == "model"]
    assert models == ["rm", "chat", "base"]
    assert "tokenizer" in {n["kind"] for n in nodes}
    tables = {n["table"] for n in nodes if n["kind"] == "dataset_snapshot"}
    assert tables == {"pref.pairs", "sft.examples", "text.corpus"}
    raw = {os.path.basename(n["uri"]) for n in nodes if n["kind"] == "raw_input"}
    assert {os.path.basename(f) for f in PREF_FILES + SFT_FILES} <= raw


def test_rerunning_the_same_sft_job_registers_nothing_new(home):
    again = home["lake"]("train", "sft", str(home["root"] / "sft.yaml"))
    assert "already trained: models:/chat/1" in again.stdout
    assert len(_mlflow(home).search_model_versions("name = 'chat'")) == 1


def test_exported_models_load_in_transformers(home):
    import torch
    from transformers import AutoModelForSequenceClassification, LlamaForCausalLM

    from lake.config import load_config
    from training import registry
    from training.checkpoint import load_pretrained, load_reward_model

    cfg = load_config(env=home["env"])
    ids = torch.tensor([[1, 5, 300, 301, 7, 6, 400, 2]])
    chat = registry.download(cfg, registry.resolve(cfg, "models:/chat/1"), home["root"] / "dl")
    with torch.no_grad():
        torch.testing.assert_close(load_pretrained(chat)[0](ids), LlamaForCausalLM.from_pretrained(chat)(ids).logits,
                                   atol=1e-4, rtol=1e-4)  # fmt: skip
        rm = registry.download(cfg, registry.resolve(cfg, home["rm"]["model_uri"]), home["root"] / "dl")
        theirs = AutoModelForSequenceClassification.from_pretrained(rm).eval()
        torch.testing.assert_close(load_reward_model(rm)[0](ids), theirs(input_ids=ids).logits.squeeze(-1),
                                   atol=1e-4, rtol=1e-4)  # fmt: skip


@pytest.mark.parametrize(
    "change, message",
    [
        ({"base": "models:/tok/1"}, "not a language model"),
        ({"data": {"table": "sft.examples", "where": "no_such = 1"}}, "does not apply"),
        ({"lora": {"rank": -1}}, "lora.rank"),
        ({"template": {"style": "fancy"}}, "template.style"),
    ],
)
def test_bad_sft_jobs_are_one_line_exit_2(home, change, message):
    path = home["root"] / "bad.yaml"
    path.write_text(yaml.safe_dump(sft_job("bad") | change))
    result = run_lake("train", "sft", str(path), env=home["env"], cwd=home["root"])
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
