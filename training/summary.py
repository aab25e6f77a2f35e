"""What a lake home holds, in one report: tables and their snapshots, registered models, one model's lineage, the
evaluation figures, and how to look further (the MLflow UI, ``lake query``). ``make demo`` ends with it.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from catalog.store import Lakehouse
from core.config import LakeConfig
from training import registry
from training.evaluate import RESULTS_TABLE
from training.lineage import lineage

# the headline figures per suite (eval.results holds many more per subject and slice)
HEADLINE_METRICS = ("ppl", "bits_per_byte", "accuracy", "win_rate", "tie_rate")


def lake_summary(cfg: LakeConfig, model_uri: str | None = None, started: float | None = None) -> dict[str, Any]:
    """The report as data; ``started`` (epoch seconds) adds the wall time since then."""
    lake = Lakehouse.from_config(cfg)
    tables = [
        {"table": name, "rows": lake.count(name), "snapshots": len(lake.snapshots(name)), "tags": len(lake.tags(name))}
        for name in lake.list_tables()
    ]
    models = registry.all_versions(cfg)
    report: dict[str, Any] = {
        "tables": tables,
        "models": [{k: m[k] for k in ("name", "version", "kind", "stage", "parent")} for m in models],
        "eval": _eval_figures(lake) if lake.exists(RESULTS_TABLE) else [],
        "how_to": {
            "mlflow_ui": f"mlflow ui --backend-store-uri {cfg.mlflow_uri_effective} --host 127.0.0.1 --port 5000",
            "query": 'lake query "SELECT lang, count(*) FROM web.documents GROUP BY lang"',
            "lineage": "lake lineage models:/NAME/VERSION",
        },
    }
    if model_uri:
        nodes = lineage(cfg, model_uri)
        report["lineage"] = {"model": model_uri, "counts": dict(Counter(n["kind"] for n in nodes)), "nodes": nodes}
    if started is not None:
        report["wall_seconds"] = round(time.time() - started, 1)
    return report


def _eval_figures(lake: Lakehouse) -> list[dict[str, Any]]:
    """The latest value of each headline metric per model and suite: per named slice for perplexity, the overall
    figure ('*') for the others (their per-subject rows stay in the table)."""
    rows = lake.read(RESULTS_TABLE).to_pylist()
    latest: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        if row["metric"] not in HEADLINE_METRICS or (row["suite"] != "ppl" and row["subject"] != "*"):
            continue
        key = (row["model"], row["version"], row["suite"], row["subject"], row["metric"])
        latest[key] = row  # appended in time order: a later evaluation of the same key wins
    return [
        {"model": f"{m}/{v}", "suite": s, "slice": sub, "metric": met, "value": round(r["value"], 4), "n": r["n"]}
        for (m, v, s, sub, met), r in sorted(latest.items(), key=lambda kv: tuple(map(str, kv[0])))
    ]


def summary_text(report: dict[str, Any]) -> str:
    """The report for a terminal: short sections, the lineage as counts and its chain of models."""
    lines = ["", "== llm-lake summary =="]
    if "wall_seconds" in report:
        lines.append(f"wall time: {report['wall_seconds'] / 60:.1f} min")
    tables = report["tables"]
    lines.append(f"tables ({len(tables)}, {sum(t['snapshots'] for t in tables)} snapshots):")
    lines += [f"  {t['table']:<32} {t['rows']:>9,} rows  {t['snapshots']:>3} snapshots" for t in tables]
    models = report["models"]
    lines.append(f"models registered ({len(models)} versions):")
    lines += [
        f"  {'models:/' + m['name'] + '/' + str(m['version']):<24} {m['kind'] or '':<18} {m['stage'] or '':<18} "
        f"{'from ' + m['parent'] if m['parent'] else ''}"
        for m in models
    ]
    if "lineage" in report:
        lin = report["lineage"]
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(lin["counts"].items()))
        upstream = ", ".join(n["uri"] for n in lin["nodes"][1:] if n["kind"] in ("model", "tokenizer"))
        lines += [f"lineage of {lin['model']} (`lake lineage` lists every node): {counts}", f"  built on {upstream}"]
    if report["eval"]:
        lines.append("eval figures (latest; eval.results holds every subject and slice):")
        lines += [
            f"  {e['model']:<18} {e['suite']:<6} {e['slice']:<8} {e['metric']:<14} {e['value']:>10}  (n={e['n']})"
            for e in report["eval"]
        ]
    how = report["how_to"]
    lines += [
        "look further:",
        f"  MLflow UI:  {how['mlflow_ui']}  (then open http://127.0.0.1:5000)",
        f"  catalog:    {how['query']}",
        f"  lineage:    {how['lineage']}",
    ]
    return "\n".join(lines)
