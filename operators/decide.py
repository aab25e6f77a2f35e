"""The one place where rows are kept or dropped: declarative hard filters over label columns.

A hard filter is ``{name, when, stage?, detail?}``; ``when`` is a polars SQL boolean expression over the row's
columns, the same language as ``lake query`` and ``lake dedup --quality`` (``operators.expressions``):

    url_blocked                                  lang_score < 0.65
    coalesce(lang, '') NOT IN $languages         coalesce(trim(text), '') = ''

``$name`` variables come from the recipe (``$languages`` becomes ``('zh', 'en')``). A row is dropped when
``when`` is true; SQL's null semantics hold, so a filter that must drop nulls says so (``coalesce``, ``IS NULL``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.base import with_columns
from operators.expressions import SqlExpression, compile_sql

INGEST_STAGE = "ingest"


@dataclass(frozen=True)
class Predicate:
    """A hard filter's ``when``: parse with :meth:`parse`, evaluate on a batch with :meth:`mask`."""

    expression: SqlExpression

    @classmethod
    def parse(cls, text: str, variables: dict[str, Any] | None = None) -> Predicate:
        expression = compile_sql(text, variables)
        if not expression.columns:
            raise ValueError(f"predicate {text!r} reads no column")
        return cls(expression)

    @property
    def text(self) -> str:
        return self.expression.text

    @property
    def columns(self) -> tuple[str, ...]:
        return self.expression.columns

    @property
    def column(self) -> str:
        """The first column it reads: the default ``detail`` of a drop."""
        return self.columns[0]

    def mask(self, batch: pa.Table) -> np.ndarray:
        """Boolean numpy mask, one entry per row, never null (null counts as false: the row is kept)."""
        values = self.expression.evaluate(batch)
        if not pa.types.is_boolean(values.type) and not pa.types.is_null(values.type):
            raise ValueError(f"predicate {self.text!r} is {values.type}, not a boolean")
        return np.asarray(pc.fill_null(values.cast(pa.bool_()), False).to_numpy(zero_copy_only=False), dtype=bool)


@dataclass(frozen=True)
class HardFilter:
    """A row matching ``when`` is dropped with ``reject_reason = name`` at ``reject_stage = stage``;
    ``detail`` names a column whose value explains the drop (default: the predicate's column)."""

    name: str
    when: Predicate
    stage: str = "decide"
    detail: str | None = None

    @classmethod
    def from_spec(cls, spec: dict[str, Any], variables: dict[str, Any] | None = None) -> HardFilter:
        unknown = sorted(set(spec) - {"name", "when", "stage", "detail"})
        if unknown or not isinstance(spec.get("name"), str) or not isinstance(spec.get("when"), str):
            raise ValueError(f"hard filter {spec!r}: needs string 'name' and 'when' (optional 'stage', 'detail')")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", spec["name"]):
            raise ValueError(f"hard filter name {spec['name']!r} must be snake_case")
        when = Predicate.parse(spec["when"], variables)
        return cls(spec["name"], when, spec.get("stage") or "decide", spec.get("detail"))


class Decision:
    """Applies hard filters in order; the first that matches a row wins. Rows that a reader already rejected
    (non-null ``reject_reason``) are dropped first, under stage ``ingest`` with the reader's reason."""

    def __init__(self, hard_filters: list[dict[str, Any] | HardFilter], variables: dict[str, Any] | None = None):
        self.hard_filters = [
            f if isinstance(f, HardFilter) else HardFilter.from_spec(f, variables) for f in hard_filters
        ]
        names = [f.name for f in self.hard_filters]
        if len(set(names)) != len(names):
            raise ValueError(f"hard filter names must be unique: {names}")

    def split(self, batch: pa.Table) -> tuple[pa.Table, pa.Table]:
        """(kept rows, rejected rows with ``reject_stage``, ``reject_reason``, ``reject_detail``)."""
        n = batch.num_rows
        stage, reason, detail = np.full(n, None, object), np.full(n, None, object), np.full(n, None, object)
        decided = np.zeros(n, dtype=bool)
        if "reject_reason" in batch.column_names:
            decided = np.asarray(pc.is_valid(batch.column("reject_reason")).to_numpy(zero_copy_only=False), bool)
            stage[decided] = INGEST_STAGE
            reason[decided] = np.asarray(batch.column("reject_reason").to_pylist(), object)[decided]
            if "reject_detail" in batch.column_names:
                detail[decided] = np.asarray(batch.column("reject_detail").to_pylist(), object)[decided]
        for hard_filter in self.hard_filters:
            hit = hard_filter.when.mask(batch) & ~decided
            if not hit.any():
                continue
            stage[hit], reason[hit] = hard_filter.stage, hard_filter.name
            detail_col = hard_filter.detail or hard_filter.when.column
            if detail_col in batch.column_names:
                values = batch.column(detail_col).to_pylist()
                detail[hit] = [f"{detail_col}={values[i]}" for i in np.flatnonzero(hit)]
            decided |= hit
        kept = batch.filter(pa.array(~decided))
        rejected = with_columns(
            batch.filter(pa.array(decided)),
            {
                "reject_stage": pa.array(stage[decided].tolist(), pa.string()),
                "reject_reason": pa.array(reason[decided].tolist(), pa.string()),
                "reject_detail": pa.array(detail[decided].tolist(), pa.string()),
            },
        )
        return kept, rejected


@dataclass
class StageCounts:
    """Mergeable row counts for one stage (summed over batches and tasks): ``a + b``, ``to_dict``,
    ``from_dict``."""

    rows_in: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    seconds: float = 0.0

    @classmethod
    def from_split(cls, kept: pa.Table, rejected: pa.Table, seconds: float = 0.0) -> StageCounts:
        reasons: dict[str, int] = {}
        if rejected.num_rows:
            for item in pc.value_counts(rejected.column("reject_reason")).to_pylist():
                reasons[str(item["values"])] = int(item["counts"])
        return cls(kept.num_rows + rejected.num_rows, kept.num_rows, reasons, seconds)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def __add__(self, other: StageCounts) -> StageCounts:
        dropped = dict(self.dropped)
        for key, value in other.dropped.items():
            dropped[key] = dropped.get(key, 0) + value
        return StageCounts(self.rows_in + other.rows_in, self.kept + other.kept, dropped, self.seconds + other.seconds)

    def to_dict(self) -> dict[str, int | float]:
        """Flat, metric-friendly: ``rows_in``, ``kept``, ``dropped``, ``dropped_<reason>``, ``seconds``."""
        out: dict[str, int | float] = {
            "rows_in": self.rows_in,
            "kept": self.kept,
            "dropped": self.dropped_total,
        }
        out.update({f"dropped_{k}": v for k, v in sorted(self.dropped.items())})
        out["seconds"] = self.seconds
        return out

    @classmethod
    def from_dict(cls, data: dict[str, int | float]) -> StageCounts:
        dropped = {k.removeprefix("dropped_"): int(v) for k, v in data.items() if k.startswith("dropped_")}
        return cls(int(data.get("rows_in", 0)), int(data.get("kept", 0)), dropped, float(data.get("seconds", 0.0)))
