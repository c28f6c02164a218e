"""A metrics dict as table rows (one row per resolution) and as strict JSON."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from cryoforge.io.atomic import atomic_path


def _json_safe(value: Any) -> Any:
    """Non-finite floats (a resolution not reached) become ``null``: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str | Path, data: dict) -> None:
    """Write ``data`` without its ``_``-prefixed keys; NaN/inf are written as ``null``."""
    clean = {k: _json_safe(v) for k, v in data.items() if not k.startswith("_")}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(clean, indent=2, default=float))


_RESOLUTION_KEY = re.compile(r"^(?P<base>.*resolution_[0-9.]+)_(?:angstrom|px|bound|text)$")


def metric_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """``(name, value)`` rows for a printed metrics table.

    Each resolution reads as one row, ``resolution_{t}`` (with its ``halfmap_`` prefix if any),
    from the summary's ``_text`` and ``_px`` keys: ``"7.2 Å, 2.40 px"``,
    ``"≤ 6.0 Å (Nyquist), 2.00 px"`` or ``"not reached (> 96.0 Å)"``. Other floats get 4
    significant digits, as do the values of a dict of numbers (``stage_wall_s``: ``"search 84.2, fit
    12.5"``); keys starting with ``_`` are left out.

    Parameters
    ----------
    metrics
        As returned by :func:`evaluate_files`.

    Returns
    -------
    Rows in the order of ``metrics``.
    """
    rows: list[tuple[str, str]] = []
    for key, value in metrics.items():
        if key.startswith("_"):
            continue
        m = _RESOLUTION_KEY.match(key)
        if m and f"{m['base']}_text" in metrics:
            base = m["base"]
            if any(name == base for name, _ in rows):
                continue
            px = metrics.get(f"{base}_px")
            text = str(metrics[f"{base}_text"])
            if isinstance(px, float) and math.isfinite(px):
                text += f", {px:.2f} px"
            rows.append((base, text))
        elif isinstance(value, list | tuple) and all(isinstance(v, float) for v in value):
            rows.append((key, "(" + ", ".join(f"{v:.3g}" for v in value) + ")"))
        elif isinstance(value, dict) and all(isinstance(v, int | float) for v in value.values()):
            rows.append((key, ", ".join(f"{k} {v:.4g}" for k, v in value.items())))  # stage_wall_s
        else:
            rows.append((key, f"{value:.4g}" if isinstance(value, float) else str(value)))
    return rows
