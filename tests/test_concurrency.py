"""Several first runs at once into one fresh LAKE_HOME: every one lands (real MLflow, real Iceberg catalog)."""

from __future__ import annotations

import subprocess
import sys
import time

from conftest import REPO

PROCESSES = 4
# each process imports everything first, then waits for the same instant, so the first uses really overlap
WAIT_FOR_START = "import time, sys; time.sleep(max(0.0, float(sys.argv[1]) - time.time()))\n"

FIRST_MLFLOW_RUN = """
from lake.config import load_config
from pipelines.tracking import start_run
import mlflow
cfg = load_config()
{wait}
with start_run(cfg, "lake-ingest", run_name="first") as run:
    mlflow.log_metric("records", 1)
print(run.info.run_id)
"""

FIRST_SCHEMA_EVOLUTION = """
import pyarrow as pa
from catalog.store import Lakehouse
from lake.config import load_config
lake = Lakehouse.from_config(load_config())
me = sys.argv[2]
{wait}
lake.ensure_table("web.documents", "documents")
for i in range(8):
    lake.add_columns("web.documents", [pa.field(f"label_{{me}}_{{i}}", pa.string())])
rows = pa.table({{"doc_id": [me], "input_digest": [me], "record_key": ["0"], f"label_{{me}}_0": ["x"]}})
print(lake.append("web.documents", rows).written)
"""


def _run_together(code: str, env: dict[str, str]) -> list[subprocess.CompletedProcess]:
    start_at = str(time.time() + 15)
    script = code.format(wait=WAIT_FOR_START)
    started = [
        subprocess.Popen(
            [sys.executable, "-c", "import sys\n" + script, start_at, f"p{i}"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(PROCESSES)
    ]
    results = []
    for proc in started:
        out, err = proc.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def test_first_mlflow_runs_at_once_all_land(lake_env):
    results = _run_together(FIRST_MLFLOW_RUN, lake_env)
    assert [r.returncode for r in results] == [0] * PROCESSES, [r.stderr[-1500:] for r in results]
    import mlflow

    from lake.config import load_config

    client = mlflow.MlflowClient(tracking_uri=load_config().mlflow_uri_effective)
    experiment = client.get_experiment_by_name("lake-ingest")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(r.stdout.strip() for r in results)


def test_first_schema_evolutions_at_once_all_land(lake, lake_env):
    results = _run_together(FIRST_SCHEMA_EVOLUTION, lake_env)
    assert [r.returncode for r in results] == [0] * PROCESSES, [r.stderr[-1500:] for r in results]
    columns = set(lake.table("web.documents").schema().column_names)
    assert {f"label_p{p}_{i}" for p in range(PROCESSES) for i in range(8)} <= columns
    assert sorted(r["doc_id"] for r in lake.read("web.documents", columns=("doc_id",)).to_pylist()) == [
        f"p{p}" for p in range(PROCESSES)
    ]
