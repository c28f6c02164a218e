"""The base class of every component's options, and how their validation errors read.

Imports nothing of cryoforge: roles, the registry, the config and every component build on it
without importing each other (see ``docs/architecture.md``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError


class Options(BaseModel):
    """Base class for a component's options: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
                f" (got {e['input']!r})"
                if "input" in e and e["type"] != "extra_forbidden" and not isinstance(e["input"], dict)
                else ""
            )
        )
    return "; ".join(parts)
