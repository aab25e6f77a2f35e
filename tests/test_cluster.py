"""Real services: a local Ray cluster and MLflow server from ``lake up``, a job from ``lake submit``."""

from __future__ import annotations

import json
import os

import pytest

from conftest import DATA_DIR, LEAKY_ENV, REPO, run_lake

pytestmark = pytest.mark.cluster

# ports of their own, so the tests never talk to a cluster someone started with the defaults
PORTS = {"LAKE_RAY_PORT": "6391", "LAKE_RAY_DASHBOARD_PORT": "8266", "LAKE_MLFLOW_PORT": "5056"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray

    # an in-process Ray left by earlier tests holds the default agent ports that `lake up`'s head would use
    ray.shutdown()
    home = tmp_path_factory.mktemp("cluster") / "home"
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}
    env |= PORTS | {
        "LAKE_HOME": str(home),
        "LAKE_DATA_DIR": str(DATA_DIR),
        "RAY_AUTH_MODE": "disabled",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    up = run_lake("up", env=env, cwd=REPO, timeout=400)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield env
    finally:
        down = run_lake("down", env=env, cwd=REPO, timeout=120)
        assert down.returncode == 0, down.stderr


def test_status_reports_two_ray_nodes_and_mlflow(cluster):
    result = run_lake("status", "--format", "json", env=cluster, cwd=REPO)
    assert result.returncode == 0, result.stderr
    rows = {r["service"]: r for r in json.loads(result.stdout)}
    assert rows["ray-head"]["state"] == "running" and rows["ray-head"]["detail"] == "2 node(s) alive"
    assert rows["ray-worker-1"]["state"] == "running"
    assert rows["mlflow"]["state"] == "running" and rows["mlflow"]["endpoint"] == "http://127.0.0.1:5056"


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


def test_submit_without_a_cluster_is_a_clear_error(lake_env):
    env = lake_env | {"LAKE_RAY_DASHBOARD_PORT": "8299"}
    result = run_lake("submit", "--", "lake", "config", env=env, cwd=REPO, timeout=120)
    assert result.returncode == 1
    assert "no Ray cluster at http://127.0.0.1:8299" in result.stderr and "Traceback" not in result.stderr
    wrong = run_lake("submit", "--", "python", "-c", "print(1)", env=env, cwd=REPO)
    assert wrong.returncode == 2
