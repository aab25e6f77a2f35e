"""The operator contract: one small class per concern, a pure function on a pyarrow batch.

An operator declares its registry name, the columns it reads and the columns (with types) it writes, and the
resources a runner should give it. Its typed ``__init__`` keyword arguments are its config. A subclass implements
``apply``: it takes a ``pa.Table`` batch and returns the batch with its output columns added (labelers) or
rewritten (modifiers). ``__call__`` is the template around it that enforces the contract: the declared input
columns are there, no row is dropped or added (keeping and dropping is decided in one place, ``operators.decide``,
so that every dropped row gets a stage and a reason), no input column disappears, no undeclared column appears,
and every declared output column is there with its declared type (cast when lossless). Runners (Ray Data, or a
plain loop in tests) live in ``pipelines/``; what they take from ``Resources`` is said there.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa


@dataclass(frozen=True)
class Resources:
    """What a runner should reserve for one instance of an operator."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int = 256
    # True when the operator holds per-instance state worth keeping across batches (a loaded model, a big
    # blocklist): Ray runs it in an actor pool instead of stateless tasks.
    stateful: bool = False


class ContractError(ValueError):
    """An operator broke its declared contract on a batch (a bug in the operator, not bad data)."""


class Operator:
    """Base class; subclasses set the class attributes and implement ``apply``."""

    name: ClassVar[str] = ""
    input_columns: ClassVar[tuple[str, ...]] = ()
    output_columns: ClassVar[dict[str, pa.DataType]] = {}
    resources: ClassVar[Resources] = Resources()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # a subclass written against the older contract (its own ``__call__``) runs through the same checks
        if "__call__" in cls.__dict__:
            cls.apply = cls.__dict__["__call__"]
            del cls.__call__

    def __call__(self, batch: pa.Table) -> pa.Table:
        """The contract around ``apply``: declared inputs in, same rows out, declared outputs with their types."""
        self.check_input(batch)
        out = self.apply(batch)
        return self.check_output(batch, out)

    def apply(self, batch: pa.Table) -> pa.Table:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_input(self, batch: pa.Table) -> None:
        missing = [c for c in self.input_columns if c not in batch.column_names]
        if missing:
            raise ValueError(f"operator {self.name!r} needs columns {missing}, batch has {batch.column_names}")

    def check_output(self, batch: pa.Table, out: pa.Table) -> pa.Table:
        """``out`` with every declared output column cast to its declared type; a broken contract raises."""
        if out.num_rows != batch.num_rows:
            raise ContractError(f"operator {self.name!r} returned {out.num_rows} rows for {batch.num_rows}")
        lost = [c for c in batch.column_names if c not in out.column_names]
        extra = [c for c in out.column_names if c not in batch.column_names and c not in self.output_columns]
        missing = [c for c in self.output_columns if c not in out.column_names]
        if lost or extra or missing:
            raise ContractError(
                f"operator {self.name!r}: columns dropped {lost}, undeclared {extra}, declared but missing {missing}"
            )
        for column, declared in self.output_columns.items():
            actual = out.schema.field(column).type
            if actual == declared:
                continue
            try:
                values = out[column].cast(declared)  # safe cast: a value that does not fit raises
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ContractError(
                    f"operator {self.name!r} wrote {column} as {actual}, declared {declared}: {exc}"
                ) from None
            out = out.set_column(out.column_names.index(column), column, values)
        return out


REGISTRY: dict[str, type[Operator]] = {}


def register(name: str):
    """Class decorator: make an operator buildable by name from a recipe."""

    def wrap(cls: type[Operator]) -> type[Operator]:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"operator name {name!r} registered twice")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return wrap


class RecipeError(ValueError):
    """A recipe names an unknown operator or passes an unknown or ill-typed option."""


def build_operator(name: str, options: dict[str, Any] | None = None) -> Operator:
    """Build a registered operator, failing before any data is read on unknown names or keys."""
    options = dict(options or {})
    if name not in REGISTRY:
        raise RecipeError(f"unknown operator {name!r}; known: {', '.join(sorted(REGISTRY))}")
    cls = REGISTRY[name]
    params = inspect.signature(cls.__init__).parameters
    accepted = {p for p in params if p != "self"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise RecipeError(f"operator {name!r} has no option(s) {unknown}; options: {sorted(accepted)}")
    return cls(**options)


def with_columns(batch: pa.Table, columns: dict[str, pa.Array | list]) -> pa.Table:
    """Add or replace columns on a batch (an operator's output)."""
    for col_name, values in columns.items():
        array = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values)
        if col_name in batch.column_names:
            batch = batch.set_column(batch.column_names.index(col_name), col_name, array)
        else:
            batch = batch.append_column(col_name, array)
    return batch
