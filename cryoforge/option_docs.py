"""Readable descriptions of option models: one row per option (name, type, default, description).

Used by ``cryoforge plugins show`` for a component's ``Options`` and for ``train.*``
(:class:`cryoforge.config.TrainConfig`). Nested models are flattened into dotted names.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticSerializationError, PydanticUndefined, to_jsonable_python

_BOUNDS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))


@dataclass(frozen=True)
class OptionRow:
    """One option: dotted ``name``, readable ``type`` (with bounds), JSON ``default``, ``description``."""

    name: str
    type: str
    default: str
    description: str


def type_name(annotation: Any) -> str:
    """A short readable type: ``int``, ``float | None``, ``list[int]``, ``'auto' | 'torch'``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _bounds(info: FieldInfo) -> str:
    parts = []
    for item in info.metadata:
        for attr, sign in _BOUNDS:
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{sign} {value:g}" if isinstance(value, int | float) else f"{sign} {value}")
    return ", ".join(parts)


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "(required)"
    else:
        value = info.default
    try:
        return json.dumps(to_jsonable_python(value), ensure_ascii=False)
    except (TypeError, PydanticSerializationError):
        return str(value)


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    """Models inside an annotation (``X``, ``X | None``, ``list[X]``), to describe their fields too."""
    found = []
    for a in (annotation, *typing.get_args(annotation)):
        for b in (a, *typing.get_args(a)):
            if isinstance(b, type) and issubclass(b, BaseModel) and b not in found:
                found.append(b)
    return found


def option_rows(model: type[BaseModel], prefix: str = "") -> list[OptionRow]:
    """Rows for every field of ``model``, and (dotted, after their parent) of nested models.

    A list of models (e.g. a staged schedule's ``stages``) is described as ``stages[].field``.
    """
    rows: list[OptionRow] = []
    for name, info in model.model_fields.items():
        full = f"{prefix}{name}"
        bounds = _bounds(info)
        kind = type_name(info.annotation) + (f", {bounds}" if bounds else "")
        rows.append(OptionRow(full, kind, _default(info), (info.description or "").strip()))
        origin = typing.get_origin(info.annotation)
        for sub in _nested_models(info.annotation):
            sep = "[]." if origin in (list, tuple) else "."
            rows.extend(option_rows(sub, full + sep))
    return rows
