"""The operator contract, enforced by the base class around every operator's ``apply``."""

from __future__ import annotations

import pyarrow as pa
import pytest

from operators.base import REGISTRY, ContractError, Operator, Resources
from operators.decide import Decision
from operators.recipe import Recipe, _import_operator_modules
from pipelines.ingest import stage_resources

BATCH = pa.table({"text": ["one", "two", "three"]})


class Length(Operator):
    name = "test_length"
    input_columns = ("text",)
    output_columns = {"length": pa.int32()}

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode

    def apply(self, batch: pa.Table) -> pa.Table:
        lengths = pa.array([len(t) for t in batch["text"].to_pylist()], pa.int64())  # wider than declared
        if self.mode == "missing":
            return batch
        if self.mode == "drop_row":
            return batch.slice(1).append_column("length", lengths[1:])
        if self.mode == "undeclared":
            return batch.append_column("length", lengths).append_column("extra", lengths)
        if self.mode == "drop_column":
            return pa.table({"length": lengths})
        if self.mode == "bad_type":
            return batch.append_column("length", pa.array(["x", "y", "z"]))
        if self.mode == "too_big":
            return batch.append_column("length", pa.array([2**40, 1, 1], pa.int64()))
        return batch.append_column("length", lengths)


def test_declared_outputs_come_out_with_their_declared_type():
    out = Length()(BATCH)
    assert out.schema.field("length").type == pa.int32() and out["length"].to_pylist() == [3, 3, 5]


@pytest.mark.parametrize(
    "mode, message",
    [
        ("missing", "declared but missing ['length']"),
        ("drop_row", "returned 2 rows for 3"),
        ("undeclared", "undeclared ['extra']"),
        ("drop_column", "columns dropped ['text']"),
        ("bad_type", "wrote length as string, declared int32"),
        ("too_big", "declared int32"),
    ],
)
def test_a_broken_contract_raises(mode, message):
    with pytest.raises(ContractError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Length(mode)(BATCH)


def test_missing_inputs_raise_before_apply_runs():
    with pytest.raises(ValueError, match="needs columns"):
        Length()(pa.table({"title": ["x"]}))


def test_an_operator_written_with_its_own_call_is_checked_too():
    class Legacy(Operator):
        name = "test_legacy"
        input_columns = ("text",)
        output_columns = {"n": pa.int64()}

        def __call__(self, batch: pa.Table) -> pa.Table:
            return batch  # forgets its output

    with pytest.raises(ContractError, match="declared but missing"):
        Legacy()(BATCH)


def test_every_registered_operator_declares_typed_outputs():
    _import_operator_modules()
    assert REGISTRY
    for name, cls in REGISTRY.items():
        assert cls.apply is not Operator.apply and "__call__" not in vars(cls), name
        assert all(isinstance(t, pa.DataType) for t in cls.output_columns.values()), name


def test_the_ingest_stage_takes_what_its_operators_declare():
    class Heavy(Length):
        resources = Resources(num_cpus=2, num_gpus=0.5, batch_size=16)

    recipe = Recipe("test", None, [], [Length(), Heavy()], Decision([]))
    assert stage_resources(recipe) == Resources(num_cpus=2, num_gpus=0.5, batch_size=16, stateful=True)
