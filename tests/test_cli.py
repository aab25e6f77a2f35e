"""The ``lake`` command line as a user meets it: the contract's names, formats, exit codes, one-line errors."""

from __future__ import annotations

import json
import tomllib

from conftest import run_lake


def _ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _usage_error(result, *needles):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_acceptance_cmmlu_dev_import_query_and_time_travel(lake_env, data_dir):
    files = sorted(str(p) for p in (data_dir / "eval/cmmlu/dev").glob("*.csv"))
    first = _ok(run_lake("import", "mc", *files, "--table", "eval.cmmlu_dev", env=lake_env))
    assert first.splitlines()[0] == "335 read, 335 imported, 0 rejected"
    second = _ok(run_lake("import", "mc", *files, "--table", "eval.cmmlu_dev", env=lake_env))
    assert second.splitlines()[0].startswith("335 read, 0 imported, 0 rejected")

    query = ["query", "SELECT count(*) AS n FROM eval.cmmlu_dev", "--format", "json"]
    assert json.loads(_ok(run_lake(*query, env=lake_env))) == [{"n": 335}]

    # a later import makes a newer snapshot; --as-of the earlier one returns the earlier count
    _ok(
        run_lake(
            "import",
            "mc",
            *sorted(str(p) for p in (data_dir / "eval/cmmlu/test").glob("a*.csv")),
            "--table",
            "eval.cmmlu_dev",
            env=lake_env,
        )
    )
    snaps = json.loads(_ok(run_lake("catalog", "snapshots", "eval.cmmlu_dev", "--format", "json", env=lake_env)))
    assert len(snaps) == 2 and set(snaps[0]) == {"snapshot_id", "timestamp", "operation", "summary"}
    later = json.loads(_ok(run_lake(*query, env=lake_env)))[0]["n"]
    assert later > 335
    earlier = json.loads(_ok(run_lake(*query, "--as-of", str(snaps[0]["snapshot_id"]), env=lake_env)))
    assert earlier == [{"n": 335}]

    _ok(
        run_lake(
            "catalog", "tag", "eval.cmmlu_dev", "dev-only", "--snapshot", str(snaps[0]["snapshot_id"]), env=lake_env
        )
    )
    assert json.loads(_ok(run_lake(*query, "--as-of", "dev-only", env=lake_env))) == [{"n": 335}]

    tables = json.loads(_ok(run_lake("catalog", "tables", "--format", "json", env=lake_env)))
    by_name = {t["table"]: t for t in tables}
    assert by_name["eval.cmmlu_dev"] == {
        "table": "eval.cmmlu_dev",
        "rows": later,
        "snapshot_id": snaps[1]["snapshot_id"],
        "note": "",
    }
    assert {"eval.rejects", "lake.runs"} <= set(by_name)
    assert all(t["note"] == "" for t in tables), "every table's current snapshot is vouched for by lake.runs"

    csv_out = _ok(
        run_lake(
            "query",
            "SELECT subject, count(*) AS n FROM eval.cmmlu_dev WHERE subject = 'virology' GROUP BY subject",
            "--format",
            "csv",
            env=lake_env,
        )
    )
    assert csv_out.splitlines() == ["subject,n", "virology,5"]
    schema = _ok(run_lake("catalog", "schema", "eval.cmmlu_dev", env=lake_env))
    assert "question" in schema and "choices" in schema


def test_bad_input_is_one_line_and_exit_2(lake_env, data_dir):
    csv = str(data_dir / "eval/cmmlu/dev/agronomy.csv")
    _ok(run_lake("import", "mc", csv, "--table", "eval.x", env=lake_env))
    _usage_error(run_lake("query", "SELECT * FROM eval.nope", env=lake_env), "eval.nope", "known tables", "eval.x")
    _usage_error(run_lake("catalog", "schema", "eval.nope", env=lake_env), "unknown table", "eval.x")
    _usage_error(run_lake("query", "SELEKT * FROM eval.x", env=lake_env))
    _usage_error(run_lake("query", "DELETE FROM eval.x", env=lake_env), "read-only")
    _usage_error(run_lake("query", "SELEC * FRM", env=lake_env), "syntax error")
    file_read = "SELECT * FROM read_csv('/etc/os-release', has_header => false)"
    _usage_error(run_lake("query", file_read, env=lake_env), "catalog tables only")
    _usage_error(run_lake("import", "mc", "/no/such/file.csv", "--table", "eval.x", env=lake_env), "no such file")
    _usage_error(run_lake("ingest", "warc", str(data_dir / "warc"), env=lake_env), "is a directory", "warc/*.gz")
    _usage_error(run_lake("import", "mc", csv, "--table", "notatable", env=lake_env), "NS.TABLE")
    _usage_error(run_lake("import", "mc", csv, "--table", "eval.y\n", env=lake_env), "NS.TABLE")
    _usage_error(run_lake("import", "sft", csv, "--table", "eval.x", env=lake_env), "holds 'mc' rows")
    _usage_error(run_lake("query", "SELECT 1 AS n FROM eval.x", "--as-of", "no-such-tag", env=lake_env), "no-such-tag")
    assert run_lake("import", "nonsense", csv, "--table", "eval.x", env=lake_env).returncode == 2


def test_config_precedence_and_init(lake_env, tmp_path):
    out = json.loads(_ok(run_lake("config", "--format", "json", env=lake_env)))
    assert out["home"] == str(tmp_path / "home")
    assert out["catalog_uri"] == f"sqlite:///{tmp_path / 'home' / 'catalog.db'}"
    assert out["source"] == "defaults"

    written = _ok(run_lake("init", "cfg", env=lake_env))
    assert "cfg/lake.toml" in written
    toml_text = (tmp_path / "cfg/lake.toml").read_text()
    tomllib.loads(toml_text)  # commented, yet valid TOML
    (tmp_path / "cfg/lake.toml").write_text(toml_text.replace("# port = 5055", "port = 5999"))
    env = {k: v for k, v in lake_env.items() if k != "LAKE_HOME"}
    out = json.loads(_ok(run_lake("--config", "cfg/lake.toml", "config", "--format", "json", env=env)))
    assert out["mlflow_port"] == 5999 and out["source"] == "cfg/lake.toml"
    out = json.loads(
        _ok(
            run_lake(
                "--config",
                "cfg/lake.toml",
                "config",
                "--format",
                "json",
                env=env | {"LAKE_MLFLOW_PORT": "6001", "LAKE_CATALOG_URI": "https://cat.example/v1"},
            )
        )
    )
    assert out["mlflow_port"] == 6001, "environment overrides the file"
    assert out["catalog_uri"] == "https://cat.example/v1"
    kept = _ok(run_lake("init", "cfg", env=lake_env))
    assert "kept" in kept, "init does not overwrite without --force"
    _usage_error(run_lake("--config", "missing.toml", "config", env=env), "missing.toml")
    _usage_error(run_lake("config", env=env | {"LAKE_RAY_HOST": "example.org"}), "IP address")
    _usage_error(run_lake("config", env=env | {"LAKE_RAY_WORKER_NODES": "-1"}), "ray_worker_nodes")


def test_ingest_cli_prints_json_and_logs_the_funnel_to_mlflow(lake_env, data_dir, tmp_path):
    files = [str(p) for p in sorted(data_dir.glob("warc/cc-2020-zh-resiliparse.warc.gz"))]
    _ok(run_lake("init", "cfg", env=lake_env))
    result = run_lake(
        "ingest", "warc", *files, "--recipe", "cfg/recipes/web.yaml", "--format", "json", env=lake_env, cwd=tmp_path
    )
    report = json.loads(_ok(result).strip().splitlines()[-1])
    assert result.stderr == "", "Ray, Ray Data and MLflow stay quiet on a good run"
    assert report["records"] == 16 == report["documents"] + report["rejects"]
    assert report["stages"]["ingest"]["rows_in"] == 16 and "language_id" in report["stages"]
    assert report["languages"]["zh"] >= 8

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    run = client.get_run(report["mlflow_run_id"])
    assert run.data.metrics["records"] == 16 and run.info.status == "FINISHED"
    runs = run_lake("query", "SELECT mlflow_run_id FROM lake.runs", "--format", "json", env=lake_env, cwd=tmp_path)
    assert json.loads(_ok(runs)) == [{"mlflow_run_id": run.info.run_id}], "lake.runs names the MLflow run"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "charts")} == {
        "charts/funnel.png",
        "charts/languages.png",
    }
    bad = run_lake("ingest", "warc", *files, "--recipe", "nope.yaml", env=lake_env, cwd=tmp_path)
    _usage_error(bad, "nope.yaml")
