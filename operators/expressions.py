"""The one expression language of recipes, dedup and mixes: polars SQL expressions over a batch's columns.

``lake query`` runs polars SQL; so do a recipe's hard filters (``when``), ``lake dedup --quality`` and mix
filters. An expression is parsed once (``compile_sql``: syntax errors and unknown functions fail before any data
is read; no Python is ever evaluated) and evaluated on pyarrow batches (``evaluate``) over just the columns it
names. ``$name`` variables from a recipe (``$languages``) become SQL literals: a list becomes ``('a', 'b')``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

_VARIABLE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def sql_literal(value: Any) -> str:
    """A Python value as a SQL literal (lists and tuples as ``(a, b)`` for IN)."""
    if isinstance(value, list | tuple):
        return "(" + ", ".join(sql_literal(v) for v in value) + ")"
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def substitute(text: str, variables: dict[str, Any]) -> str:
    def value(match: re.Match) -> str:
        name = match[1]
        if name not in variables:
            raise ValueError(f"unknown variable ${name} in {text!r}; known: {sorted(variables)}")
        return sql_literal(variables[name])

    return _VARIABLE.sub(value, text)


@dataclass(frozen=True)
class SqlExpression:
    """A compiled polars SQL expression and the columns it reads."""

    text: str
    columns: tuple[str, ...]

    def evaluate(self, batch: pa.Table) -> pa.ChunkedArray:
        """The expression's value per row of ``batch`` (a column it names must be there)."""
        import polars as pl

        missing = [c for c in self.columns if c not in batch.column_names]
        if missing:
            raise ValueError(f"expression {self.text!r}: batch has no column {missing[0]!r}")
        frame = pl.from_arrow(batch.select(list(self.columns))) if self.columns else pl.DataFrame(height=batch.num_rows)
        try:
            values = frame.select(pl.sql_expr(self.text).alias("value"))["value"]
        except pl.exceptions.PolarsError as exc:
            detail = str(exc).strip().splitlines()[0]
            raise ValueError(f"expression {self.text!r} does not apply to this batch: {detail}") from None
        if values.len() == 1 and batch.num_rows != 1:  # a constant: the one value for every row
            values = pl.repeat(values[0], batch.num_rows, dtype=values.dtype, eager=True)
        return pa.chunked_array([values.to_arrow()])


def compile_sql(text: str, variables: dict[str, Any] | None = None) -> SqlExpression:
    """Parse ``text`` (after ``$variable`` substitution); a bad expression raises ``ValueError`` at once."""
    import polars as pl

    if not isinstance(text, str) or not text.strip():
        raise ValueError("an expression must be a non-empty string")
    sql = substitute(text, variables or {})
    try:
        expr = pl.sql_expr(sql)
        columns = tuple(dict.fromkeys(expr.meta.root_names()))
    except (pl.exceptions.PolarsError, ValueError) as exc:
        raise ValueError(f"cannot parse expression {text!r}: {str(exc).strip().splitlines()[0]}") from None
    return SqlExpression(sql, columns)
