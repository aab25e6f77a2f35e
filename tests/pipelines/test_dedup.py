"""Dedup on real Ray and real Iceberg tables: planted near-duplicates of real pages, incremental batches, the CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import mlflow
import pytest
from benchmarks import dedup as bench  # tests/ is on pytest's pythonpath

from catalog.attributes import attribute_table
from catalog.query import run_query
from conftest import run_lake
from lake.config import load_config
from pipelines.dedup import DedupConfig, dedup_table, signature_table_for
from pipelines.imports import import_files


@pytest.fixture(scope="module")
def pages(data_dir) -> list[dict]:
    """12 Chinese news pages (GBK gold texts) and 12 English pages (magic-html gold, C4), as they are."""
    everything = bench.real_pages(data_dir)
    zh = [p for p in everything if p["source"] == "cx-extractor"][:12]
    en = [p for p in everything if p["source"] == "magic-html" and p["lang"] == "en"][:6]
    en += [p for p in everything if p["source"] == "c4"][:6]
    return zh + en


def write_jsonl(path: Path, docs: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        for doc in docs:
            fh.write(json.dumps({"text": doc["text"], "title": doc["title"]}, ensure_ascii=False) + "\n")
    return str(path)


def rows_by_title(lake, table: str) -> dict[str, dict]:
    """Documents with their dedup labels, through the joined view the catalog offers."""
    return {r["title"]: r for r in run_query(lake, f"SELECT * FROM {table}__labels").to_dicts()}


def test_planted_duplicates_found_against_brute_force(lake, tmp_path, pages):
    docs = bench.planted_corpus(pages, seed=3)  # each page + one copy at 1.0 / 0.95 / ... / 0.5 similarity
    import_files(lake, "text", [write_jsonl(tmp_path / "planted.jsonl", docs)], "web.planted", progress=False)
    before = lake.resolve_snapshot("web.planted", None)
    cfg = load_config()

    report = dedup_table(lake, cfg, "web.planted", DedupConfig(), progress=False)

    rows = rows_by_title(lake, "web.planted")
    assert len(rows) == len(docs) == report.documents
    truth = set(bench.brute_force_pairs([d["text"] for d in docs]))
    found = bench.cluster_pairs([rows[d["title"]]["dup_cluster_id"] for d in docs])
    recall, precision = bench.recall_precision(found, truth)
    assert len(truth) >= 12, "the planted levels >= 0.85 make true pairs"
    assert recall >= 0.95 and precision >= 0.95, (recall, precision, len(truth), len(found))
    # planted copies below 0.8 stay apart from their page
    for doc in docs:
        if doc["level"] is not None and doc["planted_j"] < 0.75:
            page = pages[doc["group"]]["title"]
            assert rows[doc["title"]]["dup_cluster_id"] != rows[page]["dup_cluster_id"]

    # labels: one keeper per cluster, sizes consistent, in the attribute table; the documents are not rewritten
    clusters: dict[str, list[dict]] = {}
    for row in rows.values():
        clusters.setdefault(row["dup_cluster_id"], []).append(row)
    for members in clusters.values():
        assert sum(m["dup_keep"] for m in members) == 1
        assert all(m["dup_cluster_size"] == len(members) for m in members)
        keeper = next(m for m in members if m["dup_keep"])
        assert keeper["doc_id"] == min(m["doc_id"] for m in members), "no quality/fetch_time: doc_id decides"
        assert keeper["doc_id"] == members[0]["dup_cluster_id"]
    assert report.duplicates == sum(not r["dup_keep"] for r in rows.values()) > 0
    assert report.clusters == sum(len(m) > 1 for m in clusters.values())
    assert lake.resolve_snapshot("web.planted", None) == before, "labelling adds no documents snapshot"
    assert "dup_keep" not in lake.table("web.planted").schema().column_names
    labels = attribute_table("web.planted", "dedup")
    assert report.snapshot_id == lake.resolve_snapshot(labels, None) and lake.count(labels) == len(docs)
    assert lake.count(signature_table_for("web.planted")) == len(docs)
    # the same labeler on the same snapshot is a no-op
    again = dedup_table(lake, cfg, "web.planted", DedupConfig(), progress=False)
    assert again.up_to_date and lake.resolve_snapshot(labels, None) == report.snapshot_id

    # the MLflow run with its histogram, and the run record
    mlflow.set_tracking_uri(cfg.mlflow_uri_effective)
    run = mlflow.get_run(report.mlflow_run_id)
    assert run.data.metrics["duplicates"] == report.duplicates and run.data.params["threshold"] == "0.8"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(report.mlflow_run_id)}
    assert {"cluster_sizes.png", "dedup_report.json"} <= artifacts
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(cfg.mlflow_artifacts_dir.resolve())
    runs = lake.read("lake.runs").to_pylist()
    assert any(r["command"] == "dedup" and r["snapshot_id"] == report.snapshot_id and r["target_table"] == labels
               for r in runs)  # fmt: skip


def test_new_batches_are_compared_without_rehashing(lake, lake_env, tmp_path, pages):
    rng = random.Random(5)
    first = [dict(p, title=f"old/{i}") for i, p in enumerate(pages[:16])]
    import_files(lake, "text", [write_jsonl(tmp_path / "b1.jsonl", first)], "web.docs", progress=False)
    cfg = load_config()
    labels = attribute_table("web.docs", "dedup")
    documents_snapshots = len(lake.snapshots("web.docs"))
    seen = 0

    def one_new_snapshot(operation: str) -> None:  # each dedup run is one commit of its labels; no documents commit
        nonlocal seen
        new = lake.snapshots(labels)[seen:]
        seen += len(new)
        assert [s.operation for s in new] == [operation], new
        assert len(lake.snapshots("web.docs")) == documents_snapshots

    one = dedup_table(lake, cfg, "web.docs", DedupConfig(mlflow=False, quality="LENGTH(text)"), progress=False)
    assert one.hashed == 16 and one.duplicates == 0
    one_new_snapshot("append")

    # crawl batch 2: near copies (J ~0.9) of two old pages, an exact copy, and two unseen pages
    copies = [
        {"text": bench.plant(first[0]["text"], 0.9, rng.randrange(1 << 30))[0], "title": "new/copy0"},
        {"text": bench.plant(first[13]["text"], 0.9, rng.randrange(1 << 30))[0] + " extra tail", "title": "new/copy13"},
        {"text": first[5]["text"].upper(), "title": "new/exact5"},
        dict(pages[16], title="new/unseen16"),
        dict(pages[17], title="new/unseen17"),
    ]
    import_files(lake, "text", [write_jsonl(tmp_path / "b2.jsonl", copies)], "web.docs", progress=False)
    documents_snapshots += 1
    result = run_lake("dedup", "web.docs", "--quality", "LENGTH(text)", "--format", "json", env=lake_env)
    assert result.returncode == 0, result.stderr[-2000:]
    two = json.loads(result.stdout.strip().splitlines()[-1])
    assert two["hashed"] == 5, "old documents are not hashed again"
    one_new_snapshot("overwrite")
    assert lake.count(signature_table_for("web.docs")) == 21
    rows = rows_by_title(lake, "web.docs")
    assert len(rows) == 21 and two["documents"] == 21
    for old, new in (("old/0", "new/copy0"), ("old/13", "new/copy13"), ("old/5", "new/exact5")):
        assert rows[old]["dup_cluster_id"] == rows[new]["dup_cluster_id"]
        assert rows[old]["dup_cluster_size"] == 2
    # quality = text length: the longer copy (with its extra tail) is the keeper
    assert rows["new/copy13"]["dup_keep"] and not rows["old/13"]["dup_keep"]
    assert rows["new/unseen16"]["dup_keep"] and rows["new/unseen16"]["dup_cluster_size"] == 1
    assert two["duplicates"] == 3 and two["clusters"] == 3

    # batch 3, deduplicated only among itself: its copy of an old page is not matched, its internal pair is
    third = [
        {"text": first[2]["text"] + " ", "title": "b3/exact2"},
        dict(pages[18], title="b3/p18"),
        {"text": pages[18]["text"].lower(), "title": "b3/p18-lower"},
    ]
    import_files(lake, "text", [write_jsonl(tmp_path / "b3.jsonl", third)], "web.docs", progress=False)
    documents_snapshots += 1
    three = dedup_table(lake, cfg, "web.docs", DedupConfig(mlflow=False, scope="batch"), progress=False)
    one_new_snapshot("append")
    assert three.hashed == 3 and three.documents == 3
    after = rows_by_title(lake, "web.docs")
    assert len(after) == 24
    assert after["b3/exact2"]["dup_cluster_size"] == 1, "batch scope: old rows are not candidates"
    assert after["b3/p18"]["dup_cluster_id"] == after["b3/p18-lower"]["dup_cluster_id"]
    for title, row in rows.items():  # older rows keep their labels
        assert {k: after[title][k] for k in ("dup_cluster_id", "dup_keep")} == {
            k: row[k] for k in ("dup_cluster_id", "dup_keep")
        }


def test_cli_usage_errors_exit_2(lake_env):
    result = run_lake("dedup", "web.nothing", env=lake_env)
    assert result.returncode == 2 and "unknown table web.nothing" in result.stderr
    result = run_lake("dedup", "web.nothing", "--threshold", "1.5", env=lake_env)
    assert result.returncode == 2 and "threshold must be between 0 and 1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
