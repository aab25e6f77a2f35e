"""Recipes: a YAML list of operators (``{name: {kwargs}}``) plus the hard filters that decide what is dropped.

``load_recipe`` validates everything before any data is read and fails with a one-line ``RecipeError``:
unknown top-level keys, unknown operators, unknown or ill-typed options (checked against each operator's typed
``__init__``), options the operator itself refuses (missing model file...), operators placed before the step
that writes their input columns, and hard filters that do not parse or use a column nothing writes.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import pyarrow as pa
import yaml

import operators as operators_pkg
from operators.base import REGISTRY, Operator, RecipeError, build_operator
from operators.decide import INGEST_STAGE, Decision, HardFilter
from operators.ingest import MAX_PAYLOAD_BYTES, ROW_SCHEMA

DEFAULT_RECIPE = Path(__file__).parent / "recipes" / "default.yaml"
_TOP_LEVEL = {"name", "description", "languages", "max_payload_bytes", "operators", "hard_filters"}


@dataclass
class Recipe:
    name: str
    languages: list[str] | None  # None keeps every language
    steps: list[tuple[str, dict[str, Any]]]
    operators: list[Operator]  # built from steps, same order
    decision: Decision
    path: str | None = None
    # readers reject a page (decompressed) or record larger than this as payload_too_large, unread
    max_payload_bytes: int = MAX_PAYLOAD_BYTES

    def apply(self, batch: pa.Table) -> pa.Table:
        """Run every operator on one batch in order (a plain loop; pipelines/ does the same with Ray Data)."""
        for op in self.operators:
            batch = op(batch)
        return batch


def _import_operator_modules() -> None:
    """Fill the registry: every module of the ``operators`` package registers its operators on import."""
    for module in pkgutil.iter_modules(operators_pkg.__path__):
        if not module.name.startswith("_"):
            try:
                importlib.import_module(f"operators.{module.name}")
            except ImportError as exc:
                raise RecipeError(f"cannot import operators.{module.name}: {exc}") from exc


def _matches(value: Any, hint: Any) -> bool:
    """Does a YAML value fit a type hint (the subset operators use: scalars, optionals, lists, dicts,
    Literal)?"""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if origin is Literal:
        return value in args
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple, set, frozenset):
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value) if args else True
    if origin is dict:
        return isinstance(value, dict) and (not args or all(_matches(v, args[1]) for v in value.values()))
    return isinstance(value, origin or hint) if isinstance(origin or hint, type) else True


def _check_options(name: str, options: dict[str, Any]) -> None:
    cls = REGISTRY[name]
    try:
        hints = get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotation: build_operator still checks names
        hints = {}
    for key, value in options.items():
        if key in hints and not _matches(value, hints[key]):
            raise RecipeError(f"operator {name!r} option {key!r}={value!r} is not {hints[key]}")


def _parse_steps(raw: Any) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(raw, list) or not raw:
        raise RecipeError("'operators' must be a non-empty list of {name: {options}}")
    steps = []
    for item in raw:
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise RecipeError(f"operator entry {item!r} must be one {{name: {{options}}}} mapping")
        ((name, options),) = item.items()
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise RecipeError(f"operator {name!r}: options must be a mapping, got {options!r}")
        steps.append((str(name), options))
    return steps


def build_recipe(spec: dict[str, Any], path: str | None = None) -> Recipe:
    """Validate a parsed recipe mapping and build its operators and decision."""
    if not isinstance(spec, dict):
        raise RecipeError("a recipe must be a YAML mapping")
    unknown = sorted(set(spec) - _TOP_LEVEL)
    if unknown:
        raise RecipeError(f"unknown recipe key(s) {unknown}; known: {sorted(_TOP_LEVEL)}")
    languages = spec.get("languages")
    if languages is not None and not (isinstance(languages, list) and all(isinstance(x, str) for x in languages)):
        raise RecipeError(f"'languages' must be a list of language codes or null, got {languages!r}")
    max_payload = spec.get("max_payload_bytes", MAX_PAYLOAD_BYTES)
    if not isinstance(max_payload, int) or isinstance(max_payload, bool) or max_payload <= 0:
        raise RecipeError(f"'max_payload_bytes' must be a positive number of bytes, got {max_payload!r}")
    steps = _parse_steps(spec.get("operators"))
    _import_operator_modules()

    written: dict[str, str] = {c: INGEST_STAGE for c in ROW_SCHEMA.names}  # column -> last step writing it
    built = []
    for name, options in steps:
        if name not in REGISTRY:
            raise RecipeError(f"unknown operator {name!r}; known: {', '.join(sorted(REGISTRY))}")
        _check_options(name, options)
        missing = [c for c in REGISTRY[name].input_columns if c not in written]
        if missing:
            raise RecipeError(f"operator {name!r} reads {missing}, which no earlier step writes")
        try:
            built.append(build_operator(name, options))
        except RecipeError:
            raise
        except (ValueError, TypeError) as exc:
            raise RecipeError(f"operator {name!r}: {exc}") from exc
        written.update(dict.fromkeys(REGISTRY[name].output_columns, name))

    filters = []
    for item in spec.get("hard_filters") or []:
        if not isinstance(item, dict):
            raise RecipeError(f"hard filter {item!r} must be a mapping with 'name' and 'when'")
        if languages is None and "$languages" in str(item.get("when", "")):
            continue  # languages: null keeps every language
        try:
            hard_filter = HardFilter.from_spec(item, {"languages": languages})
        except ValueError as exc:
            raise RecipeError(str(exc)) from exc
        order = {INGEST_STAGE: -1} | {step: i for i, (step, _) in enumerate(steps)}
        for column in (*hard_filter.when.columns, *filter(None, [hard_filter.detail])):
            if column not in written:
                raise RecipeError(f"hard filter {hard_filter.name!r} uses column {column!r}, which no step writes")
        # by default a drop belongs to the last step that wrote a column the filter reads
        stage = item.get("stage") or max((written[c] for c in hard_filter.when.columns), key=order.__getitem__)
        filters.append(HardFilter(hard_filter.name, hard_filter.when, stage, hard_filter.detail))
    try:
        decision = Decision(filters)
    except ValueError as exc:
        raise RecipeError(str(exc)) from exc
    return Recipe(str(spec.get("name") or "recipe"), languages, steps, built, decision, path, max_payload)


def load_recipe(path: str | Path = DEFAULT_RECIPE) -> Recipe:
    """Read and validate a recipe YAML; any problem raises ``RecipeError`` with a one-line message."""
    try:
        spec = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RecipeError(f"{path}: {str(exc).splitlines()[0]}") from exc
    try:
        return build_recipe(spec, str(path))
    except RecipeError as exc:
        raise RecipeError(f"{path}: {exc}") from exc
