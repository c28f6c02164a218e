"""The base class of every component's options, and how their validation errors read.

Imports nothing of cryoforge: roles, the registry, the config and every component build on it
without importing each other (see ``docs/architecture.md``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

INT_LIMIT = 2**53
"""No option is an integer this large (in magnitude): a typo, or a value no tensor can index."""


def check_int_range(value: Any) -> Any:
    """``value`` unchanged when every integer in it (lists, tuples and dicts too) is below
    :data:`INT_LIMIT` in magnitude.

    Raises
    ------
    ValueError
        For the first integer out of range.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) >= INT_LIMIT:
        raise ValueError(f"integer out of range (|value| must be below 2**53, got {value})")
    if isinstance(value, (list, tuple)):
        for v in value:
            check_int_range(v)
    elif isinstance(value, dict):
        for v in value.values():
            check_int_range(v)
    return value


class Options(BaseModel):
    """Base class for a component's options: unknown keys are errors, numbers are finite
    (``inf`` and ``nan`` are refused) and no integer reaches :data:`INT_LIMIT`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    stored_defaults: ClassVar[dict[str, Any]] = {}
    """Options added after runs were written, with the value that reproduces those runs: a run's
    stored ``config.json`` that lacks one gets this value, not today's default
    (:func:`cryoforge.engine.portable.load_run_config`)."""

    @field_validator("*", mode="after")
    @classmethod
    def _int_range(cls, value: Any) -> Any:
        return check_int_range(value)


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """Render a pydantic error as one line naming the field, e.g. ``volume.options.omega_0``."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        field = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown option"
        parts.append(
            f"{field}: {msg}"
            + (
                f" (got {_short(e['input'])})"
                if "input" in e and e["type"] != "extra_forbidden" and not isinstance(e["input"], dict)
                else ""
            )
        )
    return "; ".join(parts)


def _short(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (a pasted list may be very long)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
