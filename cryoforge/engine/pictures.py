"""Pictures and the report at every export and at the end: ``slices.png``, ``progress.png``,
``report.html`` (with ``fsc.png`` when the evaluation wrote one).

The resolution in ``progress.png`` is the FSC-0.5 resolution against ``ground_truth_map``, read
from ``history.jsonl`` (one line per export, written by the evaluation callback); half-set runs
draw the half-map FSC-0.143 in the run folder's report (:func:`write_halves_report`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from cryoforge.engine.callbacks import Callback, Exported
from cryoforge.engine.context import RunContext, RunResult
from cryoforge.io.outputs import HALF_DIRS
from cryoforge.report.html import write_report
from cryoforge.report.metrics import is_truth_metric
from cryoforge.report.progress_plot import plot_progress, resolution_series
from cryoforge.report.slices import plot_slices

log = logging.getLogger("cryoforge")

SLICES, PROGRESS, REPORT = "slices.png", "progress.png", "report.html"
GT_KEY, GT_LABEL = "resolution_0.5_angstrom", "FSC 0.5 vs ground truth"
HALF_KEY, HALF_LABEL = "halfmap_resolution_0.143_angstrom", "half-map FSC 0.143"

# what a half-set run folder's files are, where that differs from a single run's
HALF_SET_OUTPUTS = {
    "map.mrc": "map: the half maps' average, weighted by their FSC and low-passed at its 0.143 crossing",
}
# what each run file is, in the order the report lists them
OUTPUTS = (
    ("map", "map.mrc"),
    ("the two fitted (network) maps' average, half 2 aligned", "map_fitted.mrc"),
    ("half map 1 (backprojection of half 1 at its poses)", "halfmap1.mrc"),
    ("half map 2 (backprojection of half 2, aligned onto half 1)", "halfmap2.mrc"),
    ("poses (RELION 3.1 star)", "poses.star"),
    ("metrics", "metrics.json"),
    ("metrics at each export", "history.jsonl"),
    ("FSC curve", "fsc.json"),
    ("log", "run.log"),
    ("resolved configuration", "config.json"),
    ("plugins and versions", "plugins.json"),
    ("checkpoint", "checkpoint.pt"),
)


def _metric_rows(metrics: dict[str, Any]) -> list[tuple[str, str, bool]]:
    from cryoforge.metrics.summary import metric_rows

    return [(k, v, is_truth_metric(k)) for k, v in metric_rows(metrics)]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def run_report(
    run_dir: Path,
    metrics: dict[str, Any],
    pictures: list[tuple[str, str]],
    title: str,
    notes: list[str],
    config: dict[str, Any] | None = None,
) -> Path:
    """Write ``run_dir/report.html`` from the run's files and ``metrics``.

    ``config`` defaults to ``config.json`` and the plugins to ``plugins.json`` in ``run_dir`` or,
    for a half set, its parent.
    """
    parents = [run_dir, run_dir.parent]
    if config is None:
        config = next((c for c in (_read_json(p / "config.json") for p in parents) if c is not None), None)
    plugins = next((c for c in (_read_json(p / "plugins.json") for p in parents) if c is not None), None)
    half_set = any((run_dir / h).is_dir() for h in HALF_DIRS)
    outputs = [
        (HALF_SET_OUTPUTS.get(name, what) if half_set else what, name)
        for what, name in OUTPUTS
        if (run_dir / name).is_file()
    ]
    outputs += [
        (f"half set {i}", f"half{i}/{REPORT}") for i in (1, 2) if (run_dir / f"half{i}" / REPORT).is_file()
    ]
    return write_report(
        run_dir / REPORT,
        title=title,
        pictures=[(caption, run_dir / name) for caption, name in pictures],
        metrics=_metric_rows(metrics),
        outputs=outputs,
        config=config,
        plugins=plugins,
        notes=notes,
    )


class PicturesCallback(Callback):
    """Writes ``slices.png``, ``progress.png`` and ``report.html`` at each export and at the end.

    Comes after the evaluation callback, whose metrics (and ``fsc.png``) it shows. Time spent here
    is outside the training clock when the export is (periodic exports pause it).
    """

    def __init__(self) -> None:
        self.stage_starts: list[tuple[float, str]] = []

    def on_stage_start(self, ctx: RunContext, stage: Any) -> None:
        self.stage_starts.append((float(ctx.state["elapsed_s"]), stage.name))

    def on_export(self, ctx: RunContext, exported: Exported) -> None:
        px = ctx.source.pixel_size_angstrom
        plot_slices(exported.map.numpy(), px, ctx.run_dir / SLICES, f"step {ctx.state['step']}")
        self._progress(ctx)
        self._report(ctx, final=False)

    def on_run_end(self, ctx: RunContext) -> None:  # the final export drew the pictures
        self._report(ctx, final=True)

    def _progress(self, ctx: RunContext) -> None:
        h = ctx.result.history
        series = None
        if ctx.config.ground_truth_map:
            series = resolution_series(ctx.run_dir / "history.jsonl", GT_KEY, GT_LABEL)
        plot_progress(
            [e["elapsed_s"] for e in h],
            [e["loss"] for e in h],
            ctx.run_dir / PROGRESS,
            series,
            ctx.source.pixel_size_angstrom,
            ctx.source.image_size,
            self.stage_starts,
        )

    def _report(self, ctx: RunContext, final: bool) -> None:
        pictures = [
            ("current map: central slices and projections", SLICES),
            ("loss and resolution", PROGRESS),
        ]
        if (ctx.run_dir / "fsc.png").is_file():
            pictures.append(("FSC against the ground truth", "fsc.png"))
        state = "finished" if final else "in progress"
        notes = [f"Run {state}: step {ctx.state['step']}, {ctx.state['elapsed_s']:.0f} s of training."]
        if (ctx.run_dir / "map.mrc").is_file():
            notes.append(f"Open the map: chimerax {ctx.run_dir / 'map.mrc'}")
        notes += [f"Warning: {w}" for w in ctx.result.warnings]
        run_report(ctx.run_dir, ctx.result.metrics, pictures, f"cryoforge report: {ctx.run_dir.name}", notes)


def write_halves_pictures(
    run_dir: Path,
    metrics: dict[str, Any],
    avg_map: np.ndarray,
    pixel_size_angstrom: float,
    halves: list[RunResult],
    final: bool,
    warnings: list[str] | None = None,
) -> Path:
    """The half-set run folder's pictures and report: the final map, half 1's loss, the
    half-map FSC-0.143 resolution at each export (``history.jsonl``), ``fsc_halves.png``."""
    plot_slices(
        avg_map, pixel_size_angstrom, run_dir / SLICES, "map.mrc: the half maps' FSC-weighted average"
    )
    h1 = halves[0].history if halves else []
    plot_progress(
        [e["elapsed_s"] for e in h1],
        [e["loss"] for e in h1],
        run_dir / PROGRESS,
        resolution_series(run_dir / "history.jsonl", HALF_KEY, HALF_LABEL),
        pixel_size_angstrom,
        avg_map.shape[-1],
    )
    pictures = [
        ("map.mrc (the half maps' FSC-weighted average): central slices and projections", SLICES),
        ("loss of half 1; half-map resolution at each export", PROGRESS),
        (
            "half-map FSC (gold standard: backprojections) and the fitted maps' FSC; thresholds 0.5, 0.143 "
            "and the half-bit curve",
            "fsc_halves.png",
        ),
    ]
    state = "finished" if final else "in progress (both halves at the same training time)"
    notes = [f"Half-set run {state}.", f"Open the map: chimerax {run_dir / 'map.mrc'}"]
    notes += [f"Warning: {w}" for w in warnings or []]
    return run_report(run_dir, metrics, pictures, f"cryoforge report: {run_dir.name} (half sets)", notes)


def write_halves_report(
    result: RunResult, halves: list[RunResult], avg_map: np.ndarray, pixel_size_angstrom: float
) -> Path:
    """The final half-set pictures and report (the final resolution is already in the history)."""
    return write_halves_pictures(
        result.run_dir, result.metrics, avg_map, pixel_size_angstrom, halves, True, result.warnings
    )
