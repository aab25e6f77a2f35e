"""Scale benchmark: ``lake ingest warc`` and ``lake dedup`` on one Common-Crawl-sized WARC and on 4× that in 4
files: wall time, docs/s and the driver's peak RSS for both, side by side in one run.

Run: ``nice python tests/benchmarks/scale.py [--records 35000] [--multiple 4] [--workdir .bench/scale]``.

Input: ``warcgen.py`` builds ``--records × --multiple`` HTTP response records round-robin into ``--multiple``
gzip WARC files from the real shared pages (every repeat of a page with a varied URL, so every record has its own
doc id); the small run ingests the first file, the large run all of them. With the default 35,000 records a file
is ~1.4 GB gzip, a Common Crawl WARC's size. The WARCs are kept under ``--workdir`` and reused when a later run
asks for the same sizes (building them is not timed).

Each run is the real CLI in a fresh ``LAKE_HOME`` (empty catalog, local Ray started by the command, Ray start-up
included): ``lake ingest warc FILES --table bench.documents --format json``, then
``lake dedup bench.documents --format json``. Timed wall-clock from the outside; ``cpu_seconds`` is the CPU of the
command's whole process tree; ``driver_peak_rss_mb`` is the peak RSS (VmHWM) of the command's own process, the
Ray driver, not of Ray's workers.

Goals (issue 15): ingest time for ``--multiple``× the input ≤ 4.5× the single file's (at 4×), and the driver's
peak RSS within 10% between the two. The last line printed is one JSON object with both runs and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from curation import LAKE_BIN, REPO, _last_json, check_lake, lake_env, timed_run  # noqa: E402
from warcgen import build_warcs  # noqa: E402

TABLE = "bench.documents"
TIMEOUT_S = 4 * 3600


def warc_set(work: Path, records: int, multiple: int) -> tuple[list[Path], str]:
    """``multiple`` WARC files of ``records`` records each, built once and reused (a marker says they are
    complete)."""
    folder = work / f"warc-{records}x{multiple}"
    marker = folder / "done.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        return [Path(p) for p in info["files"]], info["describe"]
    shutil.rmtree(folder, ignore_errors=True)
    built = build_warcs(folder, records * multiple, files=multiple)
    info = {"files": [str(p) for p in built.files], "describe": built.describe()}
    marker.write_text(json.dumps(info))
    return built.files, info["describe"]


def run_lake(lake: Path, args: list[str], home: Path) -> dict:
    """One CLI command: wall and CPU seconds, the driver's peak RSS and the command's JSON report."""
    peak: dict[str, int] = {}
    wall, cpu, proc = timed_run([str(lake), *args], timeout=TIMEOUT_S, peak=peak, cwd=REPO, env=lake_env(home))
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        sys.exit(f"scale benchmark: lake {args[0]} failed with exit {proc.returncode}")
    return {
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "driver_peak_rss_mb": round(peak.get("rss_bytes", 0) / 2**20, 1),
        "report": _last_json(proc.stdout),
    }


def measure(lake: Path, files: list[Path], home: Path) -> dict:
    """Ingest ``files`` into a fresh lake, then dedup the result."""
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    ingest = run_lake(lake, ["ingest", "warc", *map(str, files), "--table", TABLE, "--format", "json"], home)
    records = ingest["report"]["records"]
    dedup = run_lake(lake, ["dedup", TABLE, "--format", "json"], home)
    documents = ingest["report"]["documents"]
    result = {
        "files": len(files),
        "gzip_mb": round(sum(f.stat().st_size for f in files) / 1e6, 1),
        "records": records,
        "documents": documents,
        "ingest": {k: v for k, v in ingest.items() if k != "report"}
        | {"docs_per_s": round(records / ingest["wall_seconds"], 1)},
        "dedup": {k: v for k, v in dedup.items() if k != "report"}
        | {"docs_per_s": round(documents / dedup["wall_seconds"], 1)},
    }
    dedup_report = dedup["report"]
    result["dedup"]["labels"] = {k: dedup_report[k] for k in ("documents", "clusters", "duplicates", "edges", "rounds")}
    result["dedup"]["stage_seconds"] = dedup_report["stage_seconds"]
    return result


def ratios(small: dict, large: dict, multiple: int) -> dict:
    out = {}
    for step in ("ingest", "dedup"):
        time_ratio = large[step]["wall_seconds"] / small[step]["wall_seconds"]
        rss_ratio = large[step]["driver_peak_rss_mb"] / small[step]["driver_peak_rss_mb"]
        out[step] = {
            "time_ratio": round(time_ratio, 2),
            "rss_ratio": round(rss_ratio, 3),
            "time_goal_met": time_ratio <= 4.5 * multiple / 4,
            "rss_goal_met": abs(rss_ratio - 1) <= 0.10,
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=35000, help="response records per WARC file (default 35000)")
    parser.add_argument("--multiple", type=int, default=4, help="files of the large run (default 4)")
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench" / "scale", help="WARCs and lakes live here")
    parser.add_argument("--lake", type=Path, default=LAKE_BIN, help="the lake executable")
    args = parser.parse_args(argv)

    check_lake(args.lake)
    args.workdir.mkdir(parents=True, exist_ok=True)
    files, describe = warc_set(args.workdir, args.records, args.multiple)
    print(f"# input: {describe}", flush=True)
    small = measure(args.lake, files[:1], args.workdir / "lake-1")
    print(f"# 1 file: {json.dumps(small)}", flush=True)
    large = measure(args.lake, files, args.workdir / f"lake-{args.multiple}")
    print(f"# {args.multiple} files: {json.dumps(large)}", flush=True)
    result = {
        "benchmark": "scale",
        "records_per_file": args.records,
        "multiple": args.multiple,
        "cpus": os.cpu_count(),
        "small": small,
        "large": large,
        "ratios": ratios(small, large, args.multiple),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
