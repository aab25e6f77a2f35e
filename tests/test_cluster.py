"""Real services: a local Ray cluster and MLflow server from ``lake up``, a job from ``lake submit``."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest

from conftest import DATA_DIR, LEAKY_ENV, REPO, run_lake
from listeners import is_loopback, listeners_of, session_pids

pytestmark = pytest.mark.cluster

# ports of their own, so the tests never talk to a cluster someone started with the defaults
PORTS = {"LAKE_RAY_PORT": "6391", "LAKE_RAY_DASHBOARD_PORT": "8266", "LAKE_MLFLOW_PORT": "5056"}


@contextlib.contextmanager
def lake_up(home: Path, **extra: str):
    """`lake up` in a fresh home with the test ports; yields (environment, the up's result); `lake down` after."""
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}
    env |= (
        PORTS
        | extra
        | {
            "LAKE_HOME": str(home),
            "LAKE_DATA_DIR": str(DATA_DIR),
            "RAY_AUTH_MODE": "disabled",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
    )
    up = run_lake("up", env=env, cwd=REPO, timeout=400)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield env, up
    finally:
        down = run_lake("down", env=env, cwd=REPO, timeout=120)
        assert down.returncode == 0, down.stderr


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray

    # an in-process Ray left by earlier tests holds the default agent ports that `lake up`'s head would use
    ray.shutdown()
    with lake_up(tmp_path_factory.mktemp("cluster") / "home") as (env, _):
        yield env


def test_status_reports_one_ray_node_and_mlflow(cluster):
    result = run_lake("status", "--format", "json", env=cluster, cwd=REPO)
    assert result.returncode == 0, result.stderr
    rows = {r["service"]: r for r in json.loads(result.stdout)}
    assert rows["ray-head"]["state"] == "running" and rows["ray-head"]["detail"] == "1 node(s) alive"
    assert rows["ray-head"]["address"] == "127.0.0.1:6391" and "ray-worker-1" not in rows
    assert rows["mlflow"]["state"] == "running" and rows["mlflow"]["endpoint"] == "http://127.0.0.1:5056"


def _lake_up_pids(home: Path) -> set[int]:
    """Every process `lake up` started: the pid-file processes (each leads its own session) and their descendants."""
    return session_pids({int(p.read_text()) for p in (home / "run").glob("*.pid")})


def listeners_of_lake_up(home: Path) -> list[tuple[int, str]]:
    return listeners_of(_lake_up_pids(home))


def test_submitted_import_job_lands_rows_in_the_catalog(cluster):
    # relative paths and a relative working directory: the job must still find them
    files = ["../shared/data/eval/cmmlu/dev/agronomy.csv", "../shared/data/eval/cmmlu/dev/virology.csv"]
    if not (REPO / files[0]).exists():  # data elsewhere (LAKE_DATA_DIR): use absolute paths
        files = [str(DATA_DIR / "eval/cmmlu/dev" / f.rsplit("/", 1)[-1]) for f in files]
    job = run_lake(
        "submit", "--", "lake", "import", "mc", *files, "--table", "eval.from_job", env=cluster, cwd=REPO, timeout=400
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "10 read, 10 imported, 0 rejected" in job.stdout, "the job's own output is streamed back"
    assert job.stdout.strip().endswith("job SUCCEEDED")
    count = run_lake("query", "SELECT count(*) AS n FROM eval.from_job", "--format", "json", env=cluster, cwd=REPO)
    assert json.loads(count.stdout) == [{"n": 10}], count.stderr


def test_pretraining_runs_unchanged_as_a_submitted_job(cluster, tmp_path):
    text = str(DATA_DIR / "text" / "cmrc2018_trial_zh_wiki_paragraphs.jsonl")
    assert run_lake("import", "text", text, "--table", "text.zh", env=cluster, cwd=REPO).returncode == 0
    tok = run_lake(
        "train", "tokenizer", "--table", "text.zh", "--vocab-size", "3000", "--character-coverage", "0.98",
        "--name", "job-tok", env=cluster, cwd=REPO,
    )  # fmt: skip
    assert tok.returncode == 0, tok.stderr
    config = {
        "name": "job-model",
        "tokenizer": "models:/job-tok/1",
        "data": {"table": "text.zh", "val_fraction": 0.05},
        "model": {"size": "tiny", "seq_len": 64, "overrides": {"dim": 64, "n_layers": 2}},
        "optim": {"batch_size": 2, "max_steps": 3, "warmup_steps": 1, "eval_every": 3, "checkpoint_every": 3},
        "scaling": {"num_workers": 1, "cpus_per_worker": 0.5},  # the test cluster has 2 CPUs
    }
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    job = run_lake("submit", "--", "lake", "train", "pretrain", str(path), env=cluster, cwd=REPO, timeout=600)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "registered models:/job-model/1" in job.stdout
    assert job.stdout.strip().endswith("job SUCCEEDED")
    models = json.loads(run_lake("models", "--format", "json", env=cluster, cwd=REPO).stdout)
    assert {m["name"] for m in models} >= {"job-tok", "job-model"}


def test_a_failing_job_fails_the_submit_with_its_exit_code(cluster):
    job = run_lake(
        "submit", "--", "lake", "query", "SELECT * FROM eval.does_not_exist", env=cluster, cwd=REPO, timeout=400
    )
    assert job.returncode == 2, "a usage error in the job is a usage error of the submit"
    assert "job FAILED" in job.stdout


def test_mlflow_server_answers_registry_queries(cluster):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{PORTS['LAKE_MLFLOW_PORT']}")
    experiment_id = client.create_experiment("foundation-test")
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "rows", 10)
    client.set_terminated(run.info.run_id)
    client.create_registered_model("lake-probe", tags={"lake.table": "eval.from_job"})
    version = client.create_model_version("lake-probe", source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias("lake-probe", "current", version.version)
    found = client.search_registered_models(filter_string="name = 'lake-probe'")
    assert [m.name for m in found] == ["lake-probe"]
    by_alias = client.get_model_version_by_alias("lake-probe", "current")
    assert int(by_alias.version) == 1 and by_alias.run_id == run.info.run_id
    assert client.get_run(run.info.run_id).data.metrics["rows"] == 10


# Runs after the job tests, so the processes those started (job supervisors, Ray workers) are scanned too.
def test_every_listener_of_lake_up_is_on_loopback(cluster):
    listeners = listeners_of_lake_up(Path(cluster["LAKE_HOME"]))
    ports = {int(address.rsplit(":", 1)[1]) for _, address in listeners}
    # sanity: the scan sees the services themselves: GCS, dashboard, MLflow and Ray's client server
    client_server = int(PORTS["LAKE_RAY_DASHBOARD_PORT"]) + 9  # lake/services.py: --ray-client-server-port
    assert {6391, 8266, 5056, client_server} <= ports, listeners
    assert len({pid for pid, _ in listeners}) >= 4, listeners  # head processes, agents, workers, MLflow
    exposed = [(pid, address) for pid, address in listeners if not is_loopback(address)]
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_submit_without_a_cluster_is_a_clear_error(lake_env):
    env = lake_env | {"LAKE_RAY_DASHBOARD_PORT": "8299"}
    result = run_lake("submit", "--", "lake", "config", env=env, cwd=REPO, timeout=120)
    assert result.returncode == 1
    assert "no Ray cluster at http://127.0.0.1:8299" in result.stderr and "Traceback" not in result.stderr
    wrong = run_lake("submit", "--", "python", "-c", "print(1)", env=env, cwd=REPO)
    assert wrong.returncode == 2


def test_submit_uploads_code_and_config_but_no_data_or_state(tmp_path):
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    from lake.config import load_config
    from lake.jobs import upload_excludes

    work = tmp_path / "work"
    small = {"lake.toml": "[lake]\n", "recipes/web.yaml": "operators: []\n", "ops/custom.py": "X = 1\n"}
    big = ["in.warc.gz", ".demo/a.warc", ".bench/venv/x.py", "models/lid.176.ftz", "notes/dump.txt", "home/catalog.db"]
    for name in [*small, *big]:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(small.get(name) or "x" * 2_000_000)
    (work / ".gitignore").write_text("scratch/\n")
    (work / "scratch").mkdir()
    (work / "scratch/tmp.py").write_text("")
    cfg = load_config(env={"LAKE_HOME": str(work / "home")})
    package = tmp_path / "package.zip"
    # Ray's own packaging (what JobSubmissionClient uploads), with the excludes `lake submit` passes
    create_package(str(work), package, include_gitignore=True, excludes=upload_excludes(cfg, work))
    shipped = {n for n in zipfile.ZipFile(package).namelist() if not n.endswith("/")}
    assert shipped == {*small, ".gitignore"}, shipped
