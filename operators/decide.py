"""The one place where rows are kept or dropped: declarative hard filters over label columns.

A hard filter is ``{name, when, stage?, detail?}``; ``when`` is a predicate ``column op value`` in a small
grammar parsed without ``eval``:

    url_blocked == true          lang not in [zh, en]        lang_score < 0.65
    text is empty                content_type != text/html   lang in $languages

Operators: ``==  !=  <  <=  >  >=  in  not in  is null  is not null  is empty  is not empty``.
Values: ``true``, ``false``, ``null``, numbers, quoted or bare strings, ``[a, b]`` lists, ``$name`` variables
(from the recipe).
Null semantics: a null never equals, orders or belongs; ``!=`` and ``not in`` are the exact negations of
``==`` and ``in`` (so a null ``lang`` is "not in [zh, en]" and is dropped). ``is empty`` is true for null or
blank strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.base import with_columns

INGEST_STAGE = "ingest"
_PREDICATE = re.compile(
    r"^\s*(?P<column>[A-Za-z_][A-Za-z0-9_]*)\s*"
    r"(?P<op>==|!=|<=|>=|<|>|(?<=\s)(?:not\s+in|in|is\s+not\s+null|is\s+null|is\s+not\s+empty|is\s+empty)\b)"
    r"\s*(?P<value>.*?)\s*$"
)
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_BARE = re.compile(r"^[A-Za-z0-9_./:+@-]+$")
_LIST_ITEM = re.compile(r"""\s*("[^"]*"|'[^']*'|[^,]+?)\s*(?:,|$)""")
_UNARY = {"is null", "is not null", "is empty", "is not empty"}
_COMPARE = {"==": pc.equal, "<": pc.less, "<=": pc.less_equal, ">": pc.greater, ">=": pc.greater_equal}


def _scalar(token: str, variables: dict[str, Any]) -> Any:
    if token.startswith("$"):
        if token[1:] not in variables:
            raise ValueError(f"unknown variable {token!r}; known: {sorted(variables)}")
        return variables[token[1:]]
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        return token[1:-1]
    lowered = token.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "null":
        return None
    if _NUMBER.match(token):
        return float(token) if any(c in token for c in ".eE") else int(token)
    if not _BARE.match(token):
        raise ValueError(f"cannot read value {token!r} (quote strings with spaces or symbols)")
    return token


@dataclass(frozen=True)
class Predicate:
    """``column op value``; parse with :meth:`parse`, evaluate on a batch with :meth:`mask`."""

    column: str
    op: str
    value: Any = None
    text: str = ""

    @classmethod
    def parse(cls, text: str, variables: dict[str, Any] | None = None) -> Predicate:
        variables = variables or {}
        match = _PREDICATE.match(text)
        if not match:
            raise ValueError(f"cannot parse predicate {text!r}: expected 'column op value'")
        column, op, raw = match["column"], " ".join(match["op"].split()), match["value"]
        if op in _UNARY:
            if raw:
                raise ValueError(f"predicate {text!r}: {op!r} takes no value")
            return cls(column, op, None, text)
        if not raw:
            raise ValueError(f"predicate {text!r}: {op!r} needs a value")
        if op in ("in", "not in"):
            if raw.startswith("$"):
                value = _scalar(raw, variables)
            elif raw.startswith("[") and raw.endswith("]"):
                value = [_scalar(t, variables) for t in _LIST_ITEM.findall(raw[1:-1]) if t]
            else:
                raise ValueError(f"predicate {text!r}: {op!r} needs a [list]")
            if not isinstance(value, list | tuple):
                raise ValueError(f"predicate {text!r}: {raw} is not a list")
            return cls(column, op, tuple(value), text)
        value = _scalar(raw, variables)
        if isinstance(value, list | tuple | dict):
            raise ValueError(f"predicate {text!r}: {op!r} needs a single value")
        if value is None:
            raise ValueError(f"predicate {text!r}: compare with null using 'is null'")
        return cls(column, op, value, text)

    def mask(self, batch: pa.Table) -> np.ndarray:
        """Boolean numpy mask, one entry per row, never null."""
        if self.column not in batch.column_names:
            raise ValueError(f"predicate {self.text!r}: batch has no column {self.column!r}")
        col = batch.column(self.column)
        if pa.types.is_null(col.type):  # an all-null batch column has no type to compare with: give it one
            sample = self.value[0] if isinstance(self.value, tuple) and self.value else self.value
            col = pa.nulls(len(col), pa.array([sample]).type if sample is not None else pa.string())
        try:
            result = self._evaluate(col)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise ValueError(
                f"predicate {self.text!r} does not apply to column type {col.type}: {exc}"
            ) from exc
        return np.asarray(result.to_numpy(zero_copy_only=False), dtype=bool)

    def _evaluate(self, col: pa.ChunkedArray) -> pa.ChunkedArray:
        negate = self.op in ("!=", "not in", "is not null", "is not empty")
        op = {"!=": "==", "not in": "in", "is not null": "is null", "is not empty": "is empty"}.get(
            self.op, self.op
        )
        if op == "is null":
            result = pc.is_null(col)
        elif op == "is empty":
            result = pc.equal(pc.utf8_trim_whitespace(col), "").fill_null(True)
        elif op == "in":
            values = pa.array([v for v in self.value if v is not None]).cast(col.type)
            result = pc.is_in(col, value_set=values).fill_null(False)
        else:
            scalar = pa.scalar(self.value)
            if pa.types.is_floating(col.type) and isinstance(self.value, int | float):
                # compare in the column's precision: float32(0.9) < 0.9 as a double
                scalar = pa.scalar(float(self.value), col.type)
            result = _COMPARE[op](col, scalar).fill_null(False)
        return pc.invert(result) if negate else result


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
            raise ValueError(
                f"hard filter {spec!r}: needs string 'name' and 'when' (optional 'stage', 'detail')"
            )
        if not re.fullmatch(r"[a-z][a-z0-9_]*", spec["name"]):
            raise ValueError(f"hard filter name {spec['name']!r} must be snake_case")
        when = Predicate.parse(spec["when"], variables)
        return cls(spec["name"], when, spec.get("stage") or "decide", spec.get("detail"))


class Decision:
    """Applies hard filters in order; the first that matches a row wins. Rows that a reader already rejected
    (non-null ``reject_reason``) are dropped first, under stage ``ingest`` with the reader's reason."""

    def __init__(
        self, hard_filters: list[dict[str, Any] | HardFilter], variables: dict[str, Any] | None = None
    ):
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
            decided = np.asarray(
                pc.is_valid(batch.column("reject_reason")).to_numpy(zero_copy_only=False), bool
            )
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
        return StageCounts(
            self.rows_in + other.rows_in, self.kept + other.kept, dropped, self.seconds + other.seconds
        )

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
        return cls(
            int(data.get("rows_in", 0)), int(data.get("kept", 0)), dropped, float(data.get("seconds", 0.0))
        )
