"""Metrics against the truth at every export: pose errors, FSC to a reference map; metrics.json.

Writes ``metrics.json`` (the latest metrics), ``history.jsonl`` (one line per export: the numeric
metrics with the run's ``elapsed_s`` and ``steps``), and with ``ground_truth_map`` ``fsc.png``
and ``fsc.json``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch

from cryoforge.engine.callbacks import Callback, Exported
from cryoforge.engine.context import RunContext
from cryoforge.io.mrc import read_map
from cryoforge.metrics.alignment import align_map
from cryoforge.metrics.files import true_particles
from cryoforge.metrics.fsc import fsc_report
from cryoforge.metrics.plot import plot_fsc
from cryoforge.metrics.poses import pose_errors
from cryoforge.metrics.summary import write_json
from cryoforge.ops.fft import fourier_to_volume, volume_to_fourier


def resample_map(vol: torch.Tensor, L: int) -> torch.Tensor:
    """Fourier-crop an ``n³`` map to ``L³`` (coarser voxels, same physical box)."""
    n = vol.shape[-1]
    spec = volume_to_fourier(vol)
    c, h = n // 2, L // 2
    crop = spec[c - h : c - h + L, c - h : c - h + L, c - h : c - h + L] * (L / n) ** 2
    return fourier_to_volume(crop)


class EvaluationCallback(Callback):
    """Compares each export with the known poses and ``ground_truth_map``; final run metrics."""

    def __init__(self) -> None:
        self._reference: torch.Tensor | None = None

    def reference(self, ctx: RunContext) -> torch.Tensor | None:
        """The ground-truth map at the data's box size, or ``None`` without one."""
        if ctx.config.ground_truth_map and self._reference is None:
            gt = torch.from_numpy(read_map(ctx.config.ground_truth_map)[0])
            L = ctx.source.image_size
            self._reference = gt if gt.shape[-1] == L else resample_map(gt, L)  # like the data
        return self._reference

    def on_export(self, ctx: RunContext, exported: Exported) -> None:
        source, px = ctx.source, ctx.source.pixel_size_angstrom
        metrics: dict[str, Any] = {}
        A = mirrored = None
        if exported.pose is not None and source.poses is not None:
            index = ctx.index if exported.index is None else exported.index  # the exported rows
            true = source.poses.index(torch.as_tensor(index))
            pose = exported.pose
            table = getattr(source, "table", None)
            junk_free = None if table is None else true_particles(table)  # simulate --junk-fraction
            keep = None if junk_free is None else junk_free[torch.as_tensor(index)]
            pe = pose_errors(
                pose.rotation, true.rotation, pose.shift_angstrom, true.shift_angstrom, px, keep=keep
            )
            A, mirrored = pe.pop("_A"), pe["mirrored"]
            metrics.update(pe)
        gt = self.reference(ctx)
        if gt is not None:
            if exported.pose is None:  # fitted to the known poses: already in the reference's frame
                al = align_map(exported.map, gt, torch.eye(3), False)
            elif A is not None:
                al = align_map(exported.map, gt, A, mirrored)
            else:
                al = align_map(exported.map, gt, n_search=100)
            rep = fsc_report(al.aligned, gt, px)
            metrics.update(rep.summary((0.5, 0.143)))
            metrics["map_mirrored"] = al.mirrored
            ctx.result.fsc_plot = ctx.run_dir / "fsc.png"
            plot_fsc({"map vs ground truth": rep}, ctx.result.fsc_plot)
            write_json(
                ctx.run_dir / "fsc.json", {"freq_per_px": rep.freqs.tolist(), "fsc": rep.values.tolist()}
            )
        ctx.result.metrics.update(metrics)
        if metrics:
            write_json(ctx.run_dir / "metrics.json", metrics)
            entry = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
            progress = {"elapsed_s": ctx.state["elapsed_s"], "steps": ctx.state["step"]}
            with open(ctx.run_dir / "history.jsonl", "a") as fh:  # metrics over time, one line per export
                fh.write(json.dumps({**entry, **progress}) + "\n")

    def on_run_end(self, ctx: RunContext) -> None:
        history = ctx.result.history
        ctx.result.metrics.update(
            {
                "steps": ctx.state["step"],
                "elapsed_s": ctx.state["elapsed_s"],
                "final_loss": history[-1]["loss"] if history else math.nan,
                # wall time of each stage (s), summed over resumes: where the time went
                "stage_wall_s": dict(ctx.state.get("stage_wall_s", {})),
            }
        )
        write_json(ctx.run_dir / "metrics.json", ctx.result.metrics)
