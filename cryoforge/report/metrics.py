"""Metric rows for the terminal and the report, labelled when measured against a ground truth."""

from __future__ import annotations

from typing import Any

from cryoforge.metrics.summary import metric_rows

TRUTH_PREFIXES = ("rot_", "trans_", "resolution_", "mirrored", "map_mirrored")
"""Keys of metrics computed against a ground truth (known poses or ``ground_truth_map``)."""


def is_truth_metric(key: str) -> bool:
    """Whether metric ``key`` compares with a ground truth (``halfmap_*`` does not)."""
    return key.startswith(TRUTH_PREFIXES)


def labelled_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """``(label, value)`` rows (see :func:`cryoforge.metrics.summary.metric_rows`); ground-truth
    metrics read ``"<name> (vs ground truth)"``."""
    return [(f"{k} (vs ground truth)" if is_truth_metric(k) else k, v) for k, v in metric_rows(metrics)]
