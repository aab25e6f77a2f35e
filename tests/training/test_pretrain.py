"""The pretraining path end to end through the real CLI: catalog snapshot of real shared text -> tokenizer (trained
and expanded) -> Ray Train -> MLflow registry -> transformers reload -> lineage back to the raw files.

One lake home for the module: the steps build on each other the way a user's session would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from faults import finish, kill_at_first_checkpoint, start

from conftest import DATA_DIR, LEAKY_ENV, REPO, run_lake

TEXT_FILES = [
    "text/wiki_demo.txt",
    "text/c4_demo.jsonl",
    "text/peoples_daily_ner_sentences.txt",
    "text/cmrc2018_trial_zh_wiki_paragraphs.jsonl",
]
STEPS = 12


def _job(name: str, **optim) -> dict:
    return {
        "name": name,
        "tokenizer": "models:/tok/1",
        "data": {"table": "text.corpus", "where": None, "val_fraction": 0.05, "val_max_tokens": 4096},
        "model": {
            "size": "tiny",
            "seq_len": 64,
            "overrides": {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2},
        },
        "optim": {
            "batch_size": 4,
            "max_steps": STEPS,
            "lr": 3e-3,
            "warmup_steps": 2,
            "eval_every": 4,
            "checkpoint_every": 4,
            "log_every": 2,
        }
        | optim,
        "scaling": {"num_workers": 1, "cpus_per_worker": 1},
    }


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    import ray

    ray.shutdown()  # every CLI run starts its own local Ray
    root = tmp_path_factory.mktemp("pretrain")
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}
    env |= {
        "LAKE_HOME": str(root / "home"),
        "LAKE_DATA_DIR": str(DATA_DIR),
        "RAY_AUTH_MODE": "disabled",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "LAKE_PROGRESS": "0",
    }
    files = [str(DATA_DIR / f) for f in TEXT_FILES]
    imported = run_lake("import", "text", *files, "--table", "text.corpus", env=env, cwd=root)
    assert imported.returncode == 0, imported.stderr
    tok = run_lake(
        "train", "tokenizer", "--table", "text.corpus", "--vocab-size", "4000", "--name", "tok",
        "--sample-chars", "400000", "--format", "json", env=env, cwd=root,
    )  # fmt: skip
    assert tok.returncode == 0, tok.stderr
    return {"env": env, "root": root, "tokenizer": json.loads(tok.stdout)}


def _write_job(home, name: str, **optim) -> Path:
    path = home["root"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(_job(name, **optim)))
    return path


def _mlflow(home):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{home['env']['LAKE_HOME']}/mlflow.db")


def test_tokenizer_is_registered_with_its_snapshot(home):
    info = home["tokenizer"]
    assert info["model_uri"] == "models:/tok/1" and info["vocab_size"] == 4000
    version = _mlflow(home).get_model_version("tok", "1")
    assert version.tags["lake.kind"] == "tokenizer"
    assert version.tags["lake.dataset.table"] == "text.corpus"
    assert int(version.tags["lake.dataset.snapshot_id"]) > 0


def test_expansion_keeps_old_ids_and_shortens_chinese(home):
    result = run_lake(
        "train", "tokenizer", "--table", "text.corpus", "--where", "input_uri LIKE '%peoples_daily%'",
        "--expand", "models:/tok/1", "--vocab-size", "5000", "--name", "tok-zh", "--format", "json",
        env=home["env"], cwd=home["root"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert 0 < info["added_pieces"] <= 5000 and info["vocab_size"] == 4000 + info["added_pieces"]
    # measured on held-out People's Daily rows the expansion never saw
    assert info["chars_per_token"]["heldout"] > 1.1 * info["base_chars_per_token"]["heldout"]
    assert _mlflow(home).get_model_version("tok-zh", "1").tags["lake.parent"] == "models:/tok/1"


def test_killed_run_resumes_from_its_data_position_and_equals_an_uninterrupted_run(home):
    job = _write_job(home, "killed")
    straight = start("train", "pretrain", str(_write_job(home, "straight")), env=home["env"])  # side by side
    kill_at_first_checkpoint("train", "pretrain", str(job), name="killed", env=home["env"])

    again = run_lake("train", "pretrain", str(job), env=home["env"], cwd=home["root"], timeout=900)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert "resumed at step" in again.stdout
    resumed_at = int(again.stdout.split("resumed at step")[1].split()[0])
    assert 0 < resumed_at < STEPS

    mlflow = _mlflow(home)
    version = mlflow.get_model_version("killed", "1")
    steps = [m.step for m in mlflow.get_metric_history(version.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, STEPS + 1)), "every step logged exactly once, none missing"
    val = sorted(m.step for m in mlflow.get_metric_history(version.run_id, "val/ppl"))
    assert val == [0, 4, 8, 12]

    straight = finish(straight, timeout=900)
    assert straight.returncode == 0, straight.stderr[-3000:]
    from safetensors.torch import load_file

    from lake.config import load_config
    from training import registry

    cfg = load_config(env=home["env"])
    weights = {}
    for name in ("killed", "straight"):
        folder = registry.download(cfg, registry.resolve(cfg, f"models:/{name}/1"), home["root"] / "dl")
        weights[name] = load_file(str(folder / "model.safetensors"))
    for key, tensor in weights["straight"].items():
        assert (weights["killed"][key] == tensor).all(), f"{key} differs after resume"


def test_registered_checkpoint_loads_in_transformers_with_our_logits(home):
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from lake.config import load_config
    from training import registry
    from training.checkpoint import load_pretrained

    cfg = load_config(env=home["env"])
    folder = registry.download(cfg, registry.resolve(cfg, "models:/killed/1"), home["root"] / "dl")
    ours, _ = load_pretrained(folder)
    theirs = LlamaForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("人民日报 reported on the weather.", add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, atol=1e-4, rtol=1e-4)


def test_lineage_reaches_the_raw_files(home):
    result = run_lake("lineage", "models:/killed/1", "--format", "json", env=home["env"], cwd=home["root"])
    assert result.returncode == 0, result.stderr
    nodes = json.loads(result.stdout)
    kinds = [n["kind"] for n in nodes]
    assert kinds[0] == "model" and kinds[1] == "run"
    for kind in ("tokenizer", "dataset_snapshot", "pipeline_run", "raw_input"):
        assert kind in kinds, kinds
    assert kinds.index("dataset_snapshot") < kinds.index("pipeline_run") < kinds.index("raw_input")
    raw = {Path(n["uri"]).name for n in nodes if n["kind"] == "raw_input"}
    assert raw == {Path(f).name for f in TEXT_FILES}
    models = json.loads(run_lake("models", "--format", "json", env=home["env"], cwd=home["root"]).stdout)
    assert {(m["name"], m["kind"]) for m in models} >= {("tok", "tokenizer"), ("killed", "model")}


def test_expanded_tokenizer_continues_a_checkpoint_with_grown_embeddings(home):
    job = _job("grown", max_steps=3, warmup_steps=1, eval_every=3, checkpoint_every=3)
    job["tokenizer"] = "models:/tok-zh/1"
    job["model"]["init_from"] = "models:/killed/1"
    path = home["root"] / "grown.yaml"
    path.write_text(yaml.safe_dump(job))
    result = run_lake("train", "pretrain", str(path), env=home["env"], cwd=home["root"], timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    version = _mlflow(home).get_model_version("grown", "1")
    assert version.tags["lake.parent"] == "models:/killed/1"
    expanded_vocab = int(_mlflow(home).get_model_version("tok-zh", "1").tags["lake.vocab_size"])
    from lake.config import load_config
    from training import registry

    cfg = load_config(env=home["env"])
    folder = registry.download(cfg, registry.resolve(cfg, "models:/grown/1"), home["root"] / "dl")
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == expanded_vocab > 4000
    nodes = json.loads(
        run_lake("lineage", "models:/grown/1", "--format", "json", env=home["env"], cwd=home["root"]).stdout
    )
    assert [n["name"] for n in nodes if n["kind"] == "model"] == ["grown", "killed"]


def test_rerunning_a_finished_job_registers_nothing_new(home):
    again = run_lake("train", "pretrain", str(home["root"] / "straight.yaml"), env=home["env"], cwd=home["root"])
    assert again.returncode == 0, again.stderr
    assert "already trained: models:/straight/1" in again.stdout
    assert len(_mlflow(home).search_model_versions("name = 'straight'")) == 1


@pytest.mark.parametrize(
    "change, message",
    [
        ({"data": {"table": "nope.table"}}, "unknown table nope.table"),
        ({"data": {"table": "text.corpus", "where": "length(text) < 0"}}, "selects no rows"),
        ({"data": {"table": "text.corpus", "where": "no_such_column = 1"}}, "does not apply"),
        ({"optim": {"learning_rate": 1}}, "unknown config key optim.learning_rate"),
        ({"model": {"size": "350m", "seq_len": 2048}, "optim": {"batch_size": 4096}}, "needs ~"),
        ({"tokenizer": "models:/nope/1"}, "no registered model version"),
    ],
)
def test_bad_jobs_are_one_line_exit_2_and_register_nothing(home, change, message):
    job = _job("bad")
    for section, values in change.items():
        job[section] = job[section] | values if isinstance(values, dict) else values
    path = home["root"] / "bad.yaml"
    path.write_text(yaml.safe_dump(job))
    result = run_lake("train", "pretrain", str(path), env=home["env"], cwd=home["root"])
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not _mlflow(home).search_model_versions("name = 'bad'")


def test_a_vocabulary_the_sample_cannot_support_is_exit_2(home):
    result = run_lake(
        "train", "tokenizer", "--table", "text.corpus", "--where", "input_uri LIKE '%cmrc%'", "--vocab-size",
        "500000", "--name", "too-big", env=home["env"], cwd=home["root"],
    )  # fmt: skip
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not _mlflow(home).search_model_versions("name = 'too-big'")


def test_example_config_from_lake_init_is_valid(tmp_path):
    from training.config import load_yaml

    assert run_lake("init", str(tmp_path / "demo"), cwd=REPO).returncode == 0
    job = load_yaml(tmp_path / "demo" / "train" / "pretrain.yaml")
    assert job.data.mix == "web-mix" and job.tokenizer.startswith("models:/")
    reference = load_yaml(tmp_path / "demo" / "train" / "reference.yaml")
    assert reference.data.table == "text.corpus" and reference.name != job.name
    from training.mix import load_spec

    assert load_spec(tmp_path / "demo" / "train" / "mix.yaml").name == job.data.mix
    from training.config import BestOfNConfig
    from training.stages import STAGES

    for stage in ("sft", "reward", "dpo", "ppo"):  # every key of the post-training examples is known and valid
        assert load_yaml(tmp_path / "demo" / "train" / f"{stage}.yaml", STAGES[stage].config).name
    assert load_yaml(tmp_path / "demo" / "train" / "bon.yaml", BestOfNConfig).rounds >= 2
