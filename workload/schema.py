"""Binds YAML mappings to dataclasses: unknown keys, missing keys and wrong types are one error line each."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from workload.errors import HarnessError, WorkloadError


def bind_value(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if isinstance(annotation, type) and hasattr(annotation, "from_yaml"):  # a type that parses its own form
        return annotation.from_yaml(value, where)
    if dataclasses.is_dataclass(annotation):
        return bind(annotation, value, where)
    if origin is Literal:
        if value not in args:
            raise WorkloadError(f"{where}: must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is type(None) and value is None:
                return None
        return bind_value(value, next(a for a in args if a is not type(None)), where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise WorkloadError(f"{where}: must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(bind_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise WorkloadError(f"{where}: must have {len(args)} entries, got {len(value)}")
        return tuple(bind_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if annotation is bool:
        if not isinstance(value, bool):
            raise WorkloadError(f"{where}: must be true or false, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WorkloadError(f"{where}: must be a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise WorkloadError(f"{where}: must be an integer, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise WorkloadError(f"{where}: must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {annotation!r}")  # a schema bug, not a user error


def bind(cls: Any, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise WorkloadError(f"{where}: must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise WorkloadError(f"{where}: unknown key '{unknown[0]}' (allowed: {', '.join(fields)})")
    kwargs = {}
    for name, spec in fields.items():
        if name in data:
            kwargs[name] = bind_value(data[name], hints[name], f"{where}.{name}")
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise WorkloadError(f"{where}: missing required key '{name}'")
    return cls(**kwargs)


def read_yaml(path: Path, error: type[HarnessError] = WorkloadError, what: str = "workload file") -> Any:
    """``safe_load`` a YAML file; a missing or malformed file is one ``error`` line naming it."""
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise error(f"{path}: malformed YAML{at}: {getattr(err, 'problem', err)}") from err


def from_mapping(cls: Any, data: Any, where: str, error: type[HarnessError] = WorkloadError) -> Any:
    """Build dataclass ``cls`` from a YAML mapping: unknown keys, missing keys and wrong types are errors."""
    try:
        return bind(cls, data, where)
    except WorkloadError as err:
        if error is WorkloadError:
            raise
        raise error(str(err)) from err
