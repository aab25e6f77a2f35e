"""Faults survived with identical results: a `lake` driver SIGKILLed mid-run and run again, two writers at once.

Real processes on one lake home: an uninterrupted ingest into ``ref.documents`` is the reference; the faulted runs
write tables of their own namespaces (their rejects too). Whatever happens, the tables end equal to the reference
(row count and an order-independent content hash), with no duplicate keys and every row in ``lake.runs``.
A Ray worker node killed mid-run is in ``tests/training/test_labels_and_mixes.py`` (one cluster for ingest and
``lake label ppl``, whose reference model that module trains), with the killed ``lake mix``.
"""

from __future__ import annotations

import json

import pytest
from faults import (
    RECIPE,
    WARCS,
    committed,
    duplicate_keys,
    finish,
    kill_group,
    lake_env,
    one_line_error,
    run_rows,
    start,
    table_digest,
    wait_until,
)

from catalog.runs import unrecorded_snapshot
from conftest import DATA_DIR

EXTRA_WARC = str(DATA_DIR / "warc" / "cc-2020-zh-resiliparse.warc.gz")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A lake home with the reference (WARCS ingested into ref.documents by one uninterrupted run), a copy, and
    the results of two ingests of WARCS into both.documents started together."""
    import ray

    from catalog.store import Lakehouse
    from lake.config import load_config

    ray.shutdown()  # an in-process Ray of earlier tests would compete for the two cores
    root = tmp_path_factory.mktemp("faults")
    (root / "recipe.yaml").write_text(RECIPE)
    env = lake_env(root / "home")
    lake = Lakehouse.from_config(load_config(env=env))

    def ingest(table: str, *args: str):
        return start("ingest", "warc", *args, "--table", table, "--recipe", str(root / "recipe.yaml"),
                     "--format", "json", env=env)  # fmt: skip

    # side by side: the reference, the same documents again for the dedup test to kill a dedup on, and the two
    # writers of one table that test_two_writers_at_once… checks
    started = [ingest(table, *WARCS) for table in ("ref.documents", "dd.documents", "both.documents", "both.documents")]
    reference, copy, *both = [finish(proc) for proc in started]
    for result in (reference, copy):
        assert result.returncode == 0, result.stderr[-3000:]
    return {"env": env, "lake": lake, "ingest": ingest, "reference": json.loads(reference.stdout), "both": both}


def _equal_to_reference(lake, namespace: str) -> None:
    for name in ("documents", "rejects"):
        assert duplicate_keys(lake, f"{namespace}.{name}") == 0
        assert table_digest(lake, f"{namespace}.{name}") == table_digest(lake, f"ref.{name}"), name


def test_a_killed_ingest_resumes_past_its_committed_inputs_and_ends_equal(home):
    lake = home["lake"]
    run = home["ingest"]("kill.documents", *WARCS, "--commit-every", "1")
    wait_until(lambda: len(run_rows(lake, "ingest", "kill.documents")) == 1, run, "the first input's commit")
    kill_group(run)
    partial = lake.count("kill.documents")
    assert 0 < partial < home["reference"]["documents"], "killed between the two inputs' commits"

    again = finish(home["ingest"]("kill.documents", *WARCS, "--commit-every", "1"))
    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads(again.stdout)
    assert report["skipped_inputs"] == 1 and report["documents"] == home["reference"]["documents"] - partial
    _equal_to_reference(lake, "kill")
    counts = [json.loads(r["counts"]) for r in run_rows(lake, "ingest", "kill.documents")]
    assert sum(c["new_documents"] for c in counts) == lake.count("kill.documents"), "lake.runs accounts every row"


def test_a_killed_dedup_keeps_its_signatures_and_labels_as_an_uninterrupted_run(home):
    from pipelines.dedup import signature_table_for

    lake, env = home["lake"], home["env"]
    # side by side: the reference's uninterrupted dedup, and one on the same documents that is killed
    reference = start("dedup", "ref.documents", env=env)
    run = start("dedup", "dd.documents", "--format", "json", env=env)
    wait_until(lambda: committed(lake, signature_table_for("dd.documents")), run, "the signatures' commit")
    kill_group(run)
    reference = finish(reference)
    assert reference.returncode == 0, reference.stderr[-3000:]
    again = finish(start("dedup", "dd.documents", "--format", "json", env=env))
    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads(again.stdout)
    if not report["up_to_date"]:  # killed before the labels landed: the signatures are not computed twice
        assert report["hashed"] == 0 and not report["rehashed_all"]
    assert lake.count(signature_table_for("dd.documents")) == lake.count("dd.documents")
    assert table_digest(lake, "dd.documents__dedup") == table_digest(lake, "ref.documents__dedup")
    assert lake.count("dd.documents__dedup") == lake.count("dd.documents")
    assert unrecorded_snapshot(lake, "dd.documents__dedup") is None, "the labels' run is in lake.runs"


def test_two_writers_at_once_both_land_or_one_refuses_and_totals_are_exact(home):
    lake, env = home["lake"], home["env"]
    # two ingests of the same inputs into one table, started together (beside the reference, in ``home``)
    for result in home["both"]:
        if result.returncode != 0:  # a refusal is one clear line; the re-run then succeeds
            assert one_line_error(result), result.stderr[-3000:]
            assert finish(home["ingest"]("both.documents", *WARCS)).returncode == 0
    _equal_to_reference(lake, "both")

    # an ingest of a new input while dedup labels the table, started together
    before = lake.count("both.documents")
    dedup = start("dedup", "both.documents", "--format", "json", env=env)
    ingest = home["ingest"]("both.documents", EXTRA_WARC)
    dedup_result, ingest_result = finish(dedup), finish(ingest)
    if dedup_result.returncode != 0:
        assert one_line_error(dedup_result), dedup_result.stderr[-3000:]
        assert finish(start("dedup", "both.documents", env=env)).returncode == 0
    if ingest_result.returncode != 0:
        assert one_line_error(ingest_result), ingest_result.stderr[-3000:]
        ingest_result = finish(home["ingest"]("both.documents", EXTRA_WARC))
    added = json.loads(ingest_result.stdout)
    assert duplicate_keys(lake, "both.documents") == 0
    assert lake.count("both.documents") == before + added["documents"] and added["documents"] > 0
    assert lake.count("both.rejects") - table_digest(lake, "ref.rejects")[0] == added["rejects"]
    labelled = set(lake.read("both.documents__dedup", columns=("doc_id",))["doc_id"].to_pylist())
    docs = set(lake.read("both.documents", columns=("doc_id",))["doc_id"].to_pylist())
    # (a page in both WARCs is two documents with one doc_id: count rows, compare ids as sets)
    assert labelled <= docs and lake.count("both.documents__dedup") >= before, "dedup labelled the snapshot it read"
