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
from faults import kill_at_first_checkpoint

from conftest import DATA_DIR, PREF_FILES, SFT_FILES, run_lake, sft_job


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


def test_killed_sft_run_resumes_and_equals_the_uninterrupted_run(home):
    """The fixture's `chat` job again under another name, checkpointing every 10 steps and killed after the first:
    the re-run resumes from that checkpoint and ends with `chat`'s exact weights."""
    from safetensors.torch import load_file

    from lake.config import load_config
    from training import registry

    env, job = home["env"], sft_job("chat-killed", mix={"table": "text.corpus", "fraction": 0.1})
    job["optim"] |= {"checkpoint_every": 10}
    path = home["root"] / "chat-killed.yaml"
    path.write_text(yaml.safe_dump(job, allow_unicode=True))
    kill_at_first_checkpoint("train", "sft", str(path), name="chat-killed", env=env)

    again = json.loads(home["lake"]("train", "sft", str(path), "--format", "json").stdout)
    steps = job["optim"]["max_steps"]
    assert 0 < again["resumed_from_step"] < steps, again
    history = _mlflow(home).get_metric_history(again["run_id"], "train/loss")
    assert sorted(m.step for m in history) == list(range(1, steps + 1)), "every step logged exactly once"
    cfg = load_config(env=env)
    weights = [
        load_file(str(registry.download(cfg, registry.resolve(cfg, uri), home["root"] / "dl") / "model.safetensors"))
        for uri in (again["model_uri"], home["sft"]["model_uri"])
    ]
    assert weights[0].keys() == weights[1].keys()
    for key, tensor in weights[1].items():
        assert (weights[0][key] == tensor).all(), f"{key} differs after resume"


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


def test_lake_eval_runs_ppl_mc_and_judge_and_records_each_figure_once(home):
    """The evaluation suites through the CLI on the module's models: the figures come back as JSON, land on the
    model version's MLflow run and in eval.results, and a re-run adds no rows."""
    cmmlu = DATA_DIR / "eval/cmmlu"
    home["lake"]("import", "mc", *[str(cmmlu / split / f"{s}.csv") for s in ("anatomy", "astronomy")
                                   for split in ("dev", "test")], "--table", "eval.cmmlu")  # fmt: skip
    args = ["eval", "models:/chat/1", "--suite", "ppl,mc,judge", "--limit", "6", "--table", "text.corpus",
            "--slice", "wiki=input_uri LIKE '%wiki%'", "--slice", "c4=input_uri LIKE '%c4_demo%'",
            "--mc-table", "eval.cmmlu", "--baseline", "models:/base/1", "--reward-model", home["rm"]["model_uri"],
            "--where", "source_format = 'belle'", "--max-new-tokens", "8", "--format", "json"]  # fmt: skip
    report = json.loads(home["lake"](*args).stdout)
    for name in ("wiki", "c4"):
        fig = report["ppl"][name]
        assert fig["docs"] == 6 and fig["tokens"] > 0 and fig["bytes"] >= fig["chars"] > 0, fig
        assert fig["ppl"] > 1 and fig["bits_per_byte"] > 0
    mc = report["mc"]
    assert mc["n"] == 12 and set(mc["subjects"]) == {"anatomy", "astronomy"} and "log-likelihood" in mc["method"]
    assert mc["accuracy"] == sum(s["accuracy"] * s["n"] for s in mc["subjects"].values()) / 12
    judge = report["judge"]
    assert judge["n"] == 6 and judge["win_rate"] + judge["tie_rate"] + judge["loss_rate"] == pytest.approx(1)
    assert judge["order_agreement"] == 1.0 and judge["classes"] and judge["baseline"] == "models:/base/1"
    written = report["recorded"]["eval.results"]
    assert written == 3 * 2 + 3 + 3 * (1 + len(judge["classes"]))  # ppl 3 per slice, mc overall + 2, judge 3 each

    run = _mlflow(home).get_run(_mlflow(home).get_model_version("chat", "1").run_id)
    assert run.data.metrics["eval/mc/accuracy"] == mc["accuracy"]
    assert run.data.metrics["eval/ppl/wiki/bits_per_byte"] == pytest.approx(report["ppl"]["wiki"]["bits_per_byte"])
    assert "eval/mc_subjects.png" in {a.path for a in _mlflow(home).list_artifacts(run.info.run_id, "eval")}

    mc_only = [
        "eval",
        "models:/chat/1",
        "--suite",
        "mc",
        "--limit",
        "6",
        "--mc-table",
        "eval.cmmlu",
        "--format",
        "json",
    ]
    again = json.loads(home["lake"](*mc_only).stdout)  # the same mc evaluation: the same figures, no new rows
    assert again["recorded"]["eval.results"] == 0 and again["mc"]["accuracy"] == mc["accuracy"]
    query = "SELECT suite, count(*) AS n FROM eval.results WHERE model = 'chat' GROUP BY suite ORDER BY suite"
    counts = {r["suite"]: r["n"] for r in json.loads(home["lake"]("query", query, "--format", "json").stdout)}
    assert sum(counts.values()) == written and counts["mc"] == 3


def test_lake_eval_usage_errors_are_one_line_exit_2(home):
    for args, message in [
        (["--suite", "judge"], "--baseline"),
        (["--suite", "ppl"], "--table"),
        (["--suite", "mc", "--mc-table", "eval.nothing"], "unknown table"),
    ]:
        result = run_lake("eval", "models:/chat/1", *args, env=home["env"], cwd=home["root"])
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    bogus = run_lake("eval", "models:/chat/1", "--suite", "ppl,bogus", env=home["env"], cwd=home["root"])
    assert bogus.returncode == 2 and "bogus" in bogus.stderr


def test_summary_reports_tables_models_lineage_and_eval_figures(home):
    """`lake summary` (the end of `make demo`) on the module's home, after the evaluation above."""
    report = json.loads(home["lake"]("summary", "--model", "models:/chat/1", "--format", "json").stdout)
    tables = {t["table"]: t for t in report["tables"]}
    assert tables["sft.examples"]["rows"] > 1000 and tables["sft.examples"]["snapshots"] >= 1
    assert tables["eval.results"]["rows"] > 0
    versions = {(m["name"], m["version"]): m for m in report["models"]}
    assert versions[("chat", 1)]["parent"] == "models:/base/1" and versions[("rm", 1)]["stage"] == "reward"
    counts = report["lineage"]["counts"]
    assert counts["raw_input"] >= 4 and counts["tokenizer"] == 1 and counts["dataset_snapshot"] >= 2, counts
    figures = {(e["model"], e["suite"], e["slice"], e["metric"]) for e in report["eval"]}
    assert {
        ("chat/1", "ppl", "wiki", "ppl"),
        ("chat/1", "mc", "*", "accuracy"),
        ("chat/1", "judge", "*", "win_rate"),
    } <= figures
    assert ("chat/1", "mc", "anatomy", "accuracy") not in figures  # per-subject rows stay in eval.results
    text = home["lake"]("summary").stdout
    assert "models:/chat/1" in text and "mlflow ui --backend-store-uri" in text and "lake query" in text
