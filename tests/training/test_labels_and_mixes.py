"""Model-based labels as attribute tables and label-driven mixes, on real shared data, real Ray, Iceberg and MLflow.

One lake for the module, built the way a user would: WARC pages ingested, reference text imported, a tokenizer
and a tiny reference LM trained and registered; then dedup, perplexity and quality labels, a mix, and a
pretraining run on that mix.
"""

from __future__ import annotations

import json
import math
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from faults import (
    committed,
    duplicate_keys,
    finish,
    kill_group,
    one_line_error,
    run_rows,
    runs_on,
    start,
    table_digest,
    wait_until,
    worker_raylet,
)

from conftest import DATA_DIR, LEAKY_ENV, REPO, process_env, run_lake

REFERENCE = ["text/wiki_demo.txt", "text/peoples_daily_ner_sentences.txt",
             "text/cmrc2018_trial_zh_wiki_paragraphs.jsonl"]  # fmt: skip
WEB_TEXT = "text/c4_demo.jsonl"
WARCS = ["warc/cc-2020-zh-resiliparse.warc.gz", "warc/wget-2024-en-dolma-sample-0000.warc.gz",
         "warc/wget-2024-en-dolma-sample-0001.warc.gz"]  # fmt: skip
REF_JOB = {
    "name": "ref",
    "tokenizer": "models:/tok/1",
    "data": {"table": "text.corpus", "val_fraction": 0.05, "val_max_tokens": 2048},
    "model": {"size": "tiny", "seq_len": 64, "overrides": {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2}},
    "optim": {"batch_size": 4, "max_steps": 8, "warmup_steps": 1, "eval_every": 8, "checkpoint_every": 8},
    "scaling": {"num_workers": 1, "cpus_per_worker": 1},
}


def _ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A lake with web.documents (ingested WARCs), text.corpus (reference text), web.c4 (web text), models."""
    import ray

    ray.shutdown()
    root = tmp_path_factory.mktemp("labels")
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}
    env |= {"LAKE_HOME": str(root / "home"), "LAKE_DATA_DIR": str(DATA_DIR), "RAY_AUTH_MODE": "disabled",
            "MLFLOW_DISABLE_TELEMETRY": "true", "LAKE_PROGRESS": "0"}  # fmt: skip
    run = lambda *args: _ok(run_lake(*args, env=env, cwd=root, timeout=600))  # noqa: E731
    run("import", "text", *[str(DATA_DIR / f) for f in REFERENCE], "--table", "text.corpus")
    run("import", "text", str(DATA_DIR / WEB_TEXT), "--table", "web.c4")
    run("ingest", "warc", *[str(DATA_DIR / f) for f in WARCS], "--recipe", str(REPO / "operators/recipes/default.yaml"))
    run("train", "tokenizer", "--table", "text.corpus", "--vocab-size", "4000", "--name", "tok",
        "--sample-chars", "300000")  # fmt: skip
    (root / "ref.yaml").write_text(yaml.safe_dump(REF_JOB))
    run("train", "pretrain", str(root / "ref.yaml"))
    with process_env(env):  # the library calls below run in this process, against the same lake
        from catalog.store import Lakehouse
        from lake.config import load_config

        cfg = load_config()
        yield {"env": env, "root": root, "run": run, "cfg": cfg, "lake": Lakehouse.from_config(cfg)}
    ray.shutdown()


def test_dedup_and_perplexity_labels_are_attribute_tables_and_documents_stay_untouched(lab):
    from catalog.attributes import attribute_table
    from catalog.query import run_query
    from pipelines.dedup import DedupConfig, dedup_table
    from training.quality import label_ppl

    lake, cfg = lab["lake"], lab["cfg"]
    before = lake.resolve_snapshot("web.documents", None)
    n_docs = lake.count("web.documents")
    dedup_table(lake, cfg, "web.documents", DedupConfig(), progress=False)
    report = label_ppl(cfg, "web.documents", "models:/ref/1", max_tokens=256, progress=False)
    assert lake.resolve_snapshot("web.documents", None) == before, "labelling never rewrites the documents"
    assert report.labelled == n_docs and report.replaced, "a first labelling covers every document"
    ppl_table = attribute_table("web.documents", "ppl")
    assert lake.count(ppl_table) == n_docs and lake.count(attribute_table("web.documents", "dedup")) == n_docs
    rows = lake.read(ppl_table).to_pylist()
    assert {r["labeler"] for r in rows} == {"ppl"} and {r["labeler_version"] for r in rows} == {"models:/ref/1"}
    assert {r["source_snapshot_id"] for r in rows} == {before}
    assert all(r["ppl"] is not None and r["ppl"] > 1 and r["ppl_tokens"] > 0 for r in rows)
    # CCNet buckets at the 30th / 60th percentile: about 30 % head, 30 % middle, 40 % tail
    buckets = [r["ppl_bucket"] for r in rows]
    assert 0.15 <= buckets.count("head") / n_docs <= 0.45 and 0.25 <= buckets.count("tail") / n_docs <= 0.55
    cut = report.stats["cutoffs"]["*"]
    for r in rows:
        expected = "head" if r["ppl"] < cut["p30"] else "middle" if r["ppl"] < cut["p60"] else "tail"
        assert r["ppl_bucket"] == expected
    # the same labeler on the same snapshot does nothing
    again = label_ppl(cfg, "web.documents", "models:/ref/1", max_tokens=256, progress=False)
    assert again.up_to_date and again.labelled == 0 and lake.count(ppl_table) == n_docs
    # one view joins documents with every attribute table
    view = run_query(lake, "SELECT doc_id, lang, dup_keep, ppl, ppl_bucket FROM web.documents__labels")
    assert view.height == n_docs and view["ppl"].null_count() == 0 and view["dup_keep"].null_count() == 0
    cli = lab["run"]("query", "SELECT ppl_bucket, count(*) AS n FROM web.documents__labels GROUP BY 1", "--format",
                     "json")  # fmt: skip
    assert sum(row["n"] for row in json.loads(cli.stdout)) == n_docs


def test_labeller_perplexity_equals_a_plain_transformers_loop(lab):
    """The same checkpoint in transformers, one document at a time, over the same windows: same perplexity."""
    import torch
    from transformers import LlamaForCausalLM

    from training import registry
    from training.perplexity import document_windows
    from training.tokenizer import load_tokenizer

    lake, cfg = lab["lake"], lab["cfg"]
    folder = registry.download(cfg, registry.resolve(cfg, "models:/ref/1"), cfg.home / "cache" / "models")
    tok = load_tokenizer(folder)
    model = LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    labels = {r["doc_id"]: r["ppl"] for r in lake.read("web.documents__ppl").to_pylist()}
    docs = sorted(lake.read("web.documents", columns=("doc_id", "text")).to_pylist(), key=lambda r: r["doc_id"])[:6]
    for doc in docs:
        windows = document_windows(tok.encode(doc["text"]), tok.bos_id, model.config.max_position_embeddings, 256)
        nll, n = 0.0, 0
        for w in windows:
            ids = torch.from_numpy(w)[None]
            with torch.no_grad():
                out = model(input_ids=ids[:, :-1], labels=None).logits
            nll += torch.nn.functional.cross_entropy(out[0], ids[0, 1:], reduction="sum").item()
            n += len(w) - 1
        assert abs(math.exp(nll / n) - labels[doc["doc_id"]]) / labels[doc["doc_id"]] < 1e-3


def test_quality_classifier_is_registered_and_labels_scores_in_unit_interval(lab):
    from mlflow import MlflowClient

    from catalog.attributes import attribute_table

    queries = ["--positive", "SELECT text FROM text.corpus", "--negative", "SELECT text FROM web.c4",
               "--negative", "SELECT text FROM web.documents"]  # fmt: skip
    out = lab["run"]("train", "quality-classifier", "--name", "quality", *queries, "--format", "json")
    result = json.loads(out.stdout)
    assert result["uri"] == "models:/quality/1" and sum(result["held_out"].values()) >= 30
    assert result["accuracy"] >= 0.75, result  # reference prose vs web pages, on texts it never trained on
    client = MlflowClient(lab["cfg"].mlflow_uri_effective)
    assert "confusion.png" in {a.path for a in client.list_artifacts(result["run_id"])}
    version = client.get_model_version("quality", "1")
    assert version.tags["lake.kind"] == "quality_classifier" and float(version.tags["lake.heldout_accuracy"]) > 0
    assert {d["table"] for d in json.loads(version.tags["lake.datasets"])} == {"text.corpus", "web.c4", "web.documents"}
    # a re-run with the same queries on the same snapshots registers nothing new
    again = lab["run"]("train", "quality-classifier", "--name", "quality", *queries, "--format", "json")
    again = json.loads(again.stdout)
    assert again["already_registered"] and again["uri"] == "models:/quality/1"

    lab["run"]("label", "quality", "web.c4", "--model", "models:/quality/1")
    lake = lab["lake"]
    scores = lake.read(attribute_table("web.c4", "quality"), columns=("quality_score",))["quality_score"].to_pylist()
    assert len(scores) == lake.count("web.c4") and all(0.0 <= s <= 1.0 for s in scores)


def test_a_new_snapshot_labels_only_its_new_documents(lab):
    from catalog.attributes import attribute_table
    from training.quality import label_quality

    lake, cfg = lab["lake"], lab["cfg"]
    first = label_quality(cfg, "text.corpus", "models:/quality/1", progress=False, executor="local")
    assert first.labelled == lake.count("text.corpus") and first.executor == "local"
    lab["run"]("import", "text", str(DATA_DIR / WEB_TEXT), "--table", "text.corpus")  # a new crawl batch
    # the new batch on the Ray actor pool: the same operator, the same store
    second = label_quality(cfg, "text.corpus", "models:/quality/1", progress=False, executor="ray")
    assert second.labelled == 300 and second.already_labelled == first.labelled and not second.replaced
    assert second.executor == "ray"
    table = attribute_table("text.corpus", "quality")
    ids = lake.read(table, columns=("doc_id",))["doc_id"].to_pylist()
    assert len(ids) == len(set(ids)) == lake.count("text.corpus")


SPEC = {
    "name": "test-mix",
    "tokenizer": "models:/tok/1",
    "budget_tokens": 60_000,
    "sources": {"web": {"table": "web.documents"}, "ref": {"table": "text.corpus"}},
    "buckets": {
        "web": {"source": "web", "where": "dup_keep AND ppl_bucket <> 'tail'", "max_epochs": 2},
        "ref": {"source": "ref", "where": "quality_score > 0.5", "max_epochs": 4},
    },
    "phases": [
        {"name": "stable", "share": 0.75, "weights": {"web": 0.7, "ref": 0.3}},
        {"name": "anneal", "share": 0.25, "weights": {"web": 0.2, "ref": 0.8}},
    ],
}


def test_mix_is_deterministic_reports_epochs_and_pretrains_with_lineage(lab):
    from catalog.query import run_query

    root, run, lake = lab["root"], lab["run"], lab["lake"]
    spec = root / "mix.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    first = json.loads(run("mix", str(spec), "--format", "json").stdout)
    second = json.loads(run("mix", str(spec), "--format", "json").stdout)
    assert first["digest"] == second["digest"] and second["unchanged"]
    assert first["snapshot_id"] == second["snapshot_id"] == lake.tags("mix.test_mix")[first["tag"]]
    rows = run_query(lake, "SELECT * FROM mix.test_mix").to_dicts()
    assert len(rows) == first["documents"] > 0
    # the buckets hold what their predicates select, nothing else
    allowed = set(run_query(lake, "SELECT doc_id FROM web.documents__labels WHERE dup_keep AND ppl_bucket <> 'tail'")
                  ["doc_id"].to_list())  # fmt: skip
    assert {r["doc_id"] for r in rows if r["bucket"] == "web"} <= allowed
    for bucket in first["buckets"]:
        taken = sum(r["tokens"] * r["repeat"] for r in rows if r["bucket"] == bucket["name"])
        assert taken == bucket["tokens_taken"]
        assert bucket["effective_epochs"] == pytest.approx(taken / bucket["tokens_available"], abs=1e-4)
        assert bucket["effective_epochs"] <= bucket["max_epochs"] + 1e-9
    phases = {p["name"]: p for p in first["phases"]}
    assert phases["anneal"]["buckets"]["ref"] > phases["anneal"]["buckets"]["web"], "anneal is richer in reference"
    assert sum(p["tokens"] for p in first["phases"]) == first["tokens"]

    # a smaller ceiling caps the bucket and changes the digest
    capped = dict(SPEC, buckets=dict(SPEC["buckets"], web=dict(SPEC["buckets"]["web"], max_epochs=0.2)))
    spec.write_text(yaml.safe_dump(capped))
    third = json.loads(run("mix", str(spec), "--format", "json").stdout)
    web = next(b for b in third["buckets"] if b["name"] == "web")
    assert web["capped"] and web["effective_epochs"] <= 0.2 + 0.2 and third["digest"] != first["digest"]

    # pretraining on the first resolution (by its tag), and lineage through the mix to the raw files
    job = dict(REF_JOB, name="on-mix", data={"mix": f"test-mix@{first['tag']}", "val_fraction": 0.05,
                                             "val_max_tokens": 2048},
               optim=dict(REF_JOB["optim"], max_steps=3, checkpoint_every=3, eval_every=3))  # fmt: skip
    (root / "on_mix.yaml").write_text(yaml.safe_dump(job))
    run("train", "pretrain", str(root / "on_mix.yaml"))
    nodes = json.loads(run("lineage", "models:/on-mix/1", "--format", "json").stdout)
    kinds = [n["kind"] for n in nodes]
    assert kinds.index("mix") < kinds.index("dataset_snapshot"), kinds
    mix_node = next(n for n in nodes if n["kind"] == "mix")
    assert mix_node["snapshot_id"] == first["snapshot_id"] and first["tag"] in mix_node["tag"]
    assert {"web.documents__dedup", "web.documents__ppl", "text.corpus__quality"} <= {
        n["table"] for n in nodes if n["kind"] == "attributes"
    }
    assert any(n["kind"] == "raw_input" and n["uri"].endswith(".warc.gz") for n in nodes)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"budget": 5}, "unknown key(s) budget"),
        ({"phases": [{"name": "a", "share": 0.5, "weights": {"web": 1}}]}, "shares must add up to 1"),
        ({"buckets": {"web": {"source": "web", "where": "no_such_label > 1"}, "ref": {"source": "ref"}}}, "bucket web"),
        ({"buckets": {"web": {"source": "elsewhere"}, "ref": {"source": "ref"}}}, "buckets.web.source"),
    ],
)
def test_bad_mix_specs_are_one_line_exit_2(lab, change, message):
    spec = lab["root"] / "bad.yaml"
    spec.write_text(yaml.safe_dump(dict(SPEC, **change)))
    result = run_lake("mix", str(spec), env=lab["env"], cwd=lab["root"])
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_labelling_an_unknown_model_or_table_is_exit_2(lab):
    bad_model = run_lake("label", "ppl", "web.documents", "--model", "models:/nope/1", env=lab["env"])
    assert bad_model.returncode == 2 and "no registered model version" in bad_model.stderr
    wrong_kind = run_lake("label", "quality", "web.documents", "--model", "models:/ref/1", env=lab["env"])
    assert wrong_kind.returncode == 2 and "not a quality_classifier" in wrong_kind.stderr
    no_table = run_lake("label", "quality", "web.nothing", "--model", "models:/quality/1", env=lab["env"])
    assert no_table.returncode == 2 and "unknown table web.nothing" in no_table.stderr
    assert np.all([len(r.stderr.strip().splitlines()) == 1 for r in (bad_model, wrong_kind, no_table)])


# ---- faults: a Ray worker node lost mid-run (ingest, label ppl) and a killed `lake mix` --------------------------
# ports of their own: test_cluster's cluster may be up at the same time on another worktree's run
FAULT_PORTS = {"LAKE_RAY_PORT": "6395", "LAKE_RAY_DASHBOARD_PORT": "8366", "LAKE_MLFLOW_PORT": "5066"}


@pytest.fixture(scope="module")
def worker_cluster_up(lab):
    """`lake up` on the lab's home with a worker node beside the head (one CPU each); yields a driver's env and
    the up's result."""
    import ray
    from test_cluster import lake_up

    ray.shutdown()  # the lab's in-process Ray would compete for the two cores
    nodes = {"LAKE_RAY_WORKER_NODES": "1", "LAKE_RAY_CPUS_PER_NODE": "1"}
    home_token = Path.home() / ".ray" / "auth_token"
    had_home_token = home_token.exists()
    with lake_up(Path(lab["env"]["LAKE_HOME"]), **FAULT_PORTS, **nodes) as (env, up):
        yield env | {"RAY_ADDRESS": f"127.0.0.1:{FAULT_PORTS['LAKE_RAY_PORT']}", "LAKE_PROGRESS": "0"}, up
    assert had_home_token or not home_token.exists(), "the token lives in LAKE_HOME, not ~/.ray"


@pytest.fixture(scope="module")
def worker_cluster(worker_cluster_up):
    return worker_cluster_up[0]


def test_a_multi_node_cluster_is_opened_only_with_token_authentication(worker_cluster_up):
    """RAY_AUTH_MODE=disabled in the environment: a cluster that listens beyond loopback turns token auth on
    regardless (this module's fault tests need such a cluster; it is checked here rather than started twice)."""
    env, up = worker_cluster_up
    warnings = [line for line in up.stderr.splitlines() if "listens beyond loopback" in line]
    assert len(warnings) == 1 and "token authentication is on" in warnings[0], up.stderr
    token = Path(env["LAKE_HOME"]) / "run" / "ray_auth_token"
    assert token.stat().st_mode & 0o777 == 0o600
    status = run_lake("status", "--format", "json", env=env, cwd=REPO)
    rows = {r["service"]: r for r in json.loads(status.stdout)}
    assert rows["ray-head"]["detail"] == "2 node(s) alive" and rows["ray-worker-1"]["state"] == "running"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{FAULT_PORTS['LAKE_RAY_DASHBOARD_PORT']}/api/version", timeout=10)
    assert refused.value.code == 401, "the dashboard answers only with the token"


def _survive_a_lost_worker_node(args: list[str], env: dict, actor_class: str, progress) -> None:
    """Run `lake *args` on the cluster, kill -9 the worker node's raylet once ``progress()`` holds and an
    ``actor_class`` actor works there; the run completes, or fails in one line and its re-run completes."""
    ok = run_lake("up", env=env, cwd=REPO, timeout=300)  # the worker node again, if an earlier fault took it
    assert ok.returncode == 0, ok.stderr
    raylet = worker_raylet(Path(env["LAKE_HOME"]))
    run = start(*args, env=env)
    wait_until(lambda: progress() and runs_on(raylet, actor_class), run, f"a {actor_class} on the worker node")
    os.kill(raylet, signal.SIGKILL)
    result = finish(run)
    if result.returncode != 0:
        assert one_line_error(result), result.stderr[-3000:]
        again = finish(start(*args, env=env))
        assert again.returncode == 0, again.stderr[-3000:]


def test_ingest_survives_a_lost_worker_node_and_equals_the_uninterrupted_run(lab, worker_cluster):
    lake = lab["lake"]
    args = ["ingest", "warc", *[str(DATA_DIR / f) for f in WARCS], "--table", "fault.documents", "--recipe",
            str(REPO / "operators/recipes/default.yaml"), "--commit-every", "1"]  # fmt: skip
    # the lab's web.documents is the uninterrupted run of the same inputs and recipe
    first_commit = lambda: bool(run_rows(lake, "ingest", "fault.documents"))  # noqa: E731
    _survive_a_lost_worker_node(args, worker_cluster, "RecipeRunner", first_commit)
    assert duplicate_keys(lake, "fault.documents") == 0
    assert table_digest(lake, "fault.documents") == table_digest(lake, "web.documents")
    ref_rejects = [r for r in lake.read("web.rejects").to_pylist() if r["target_table"] == "web.documents"]
    assert lake.count("fault.rejects") == len(ref_rejects) and duplicate_keys(lake, "fault.rejects") == 0


def test_label_ppl_survives_a_lost_worker_node_and_equals_the_uninterrupted_run(lab, worker_cluster):
    lake = lab["lake"]
    args = ["label", "ppl", "fault.documents", "--model", "models:/ref/1", "--max-tokens", "256"]
    _survive_a_lost_worker_node(args, worker_cluster, "ApplyOperator", lambda: True)
    # web.documents__ppl: the same model on the same documents, uninterrupted (the first test of this module)
    got = {r["doc_id"]: r for r in lake.read("fault.documents__ppl").to_pylist()}
    expected = {r["doc_id"]: r for r in lake.read("web.documents__ppl").to_pylist()}
    assert lake.count("fault.documents__ppl") == lake.count("fault.documents") == lake.count("web.documents__ppl")
    assert got.keys() == expected.keys()  # (a page in two WARCs is two documents with one doc_id)
    for doc_id, row in got.items():
        assert row["ppl"] == pytest.approx(expected[doc_id]["ppl"], rel=1e-4)
        assert row["ppl_bucket"] == expected[doc_id]["ppl_bucket"]


def test_a_killed_mix_is_completed_by_its_rerun_and_equals_an_uninterrupted_one(lab):
    from catalog.runs import unrecorded_snapshot

    lake, root = lab["lake"], lab["root"]
    spec = root / "fault_mix.yaml"
    spec.write_text(yaml.safe_dump(dict(SPEC, name="fault-mix")))
    run = start("mix", str(spec), "--format", "json", env=lab["env"])
    wait_until(lambda: committed(lake, "mix.fault_mix"), run, "the mix's commit")
    kill_group(run)
    committed_rows = table_digest(lake, "mix.fault_mix")
    again = json.loads(lab["run"]("mix", str(spec), "--format", "json").stdout)
    # a fresh resolution hashes to what the killed run committed: the content of an uninterrupted run
    assert again["unchanged"] and table_digest(lake, "mix.fault_mix") == committed_rows
    assert len(lake.snapshots("mix.fault_mix")) == 1, "nothing written twice"
    assert unrecorded_snapshot(lake, "mix.fault_mix") is None, "the re-run records the killed run's snapshot"
