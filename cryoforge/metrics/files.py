"""Evaluation from files (behind ``cryoforge evaluate``): FSC, resolution and pose errors of maps
and pose tables on disk, written as ``fsc.png`` and ``metrics.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cryoforge.errors import InputFileError
from cryoforge.io.mrc import check_same_grid, read_map
from cryoforge.io.outputs import refuse_existing, refuse_input_overlap
from cryoforge.io.star import JUNK_COLUMN, read_star
from cryoforge.io.table import ParticleTable
from cryoforge.metrics.alignment import align_map
from cryoforge.metrics.fsc import fsc_report
from cryoforge.metrics.plot import plot_fsc
from cryoforge.metrics.poses import pose_errors
from cryoforge.metrics.summary import write_json


def true_particles(*tables: ParticleTable) -> torch.Tensor | None:
    """``(N,)`` bool: the particles not flagged as junk by the first of ``tables`` that has the
    column :data:`~cryoforge.io.star.JUNK_COLUMN` (``cryoforge simulate --junk-fraction``), or
    ``None`` when none has it.

    Raises
    ------
    InputFileError
        When the column holds something other than 0/1, or flags every particle.
    """
    for t in tables:
        if JUNK_COLUMN not in t.extra:
            continue
        flags = np.asarray(pd.to_numeric(pd.Series(t.extra[JUNK_COLUMN]), errors="coerce"), dtype=np.float64)
        if not np.isin(flags, (0.0, 1.0)).all():
            raise InputFileError(t.path, "junk flags must be 0 or 1", JUNK_COLUMN)
        if flags.all():
            raise InputFileError(t.path, "every particle is flagged junk: no pose to score", JUNK_COLUMN)
        return torch.from_numpy(flags == 0)
    return None


def evaluate_files(
    map_path: str,
    ref_path: str | None,
    half2_path: str | None,
    poses_path: str | None,
    gt_poses_path: str | None,
    out_dir: Path,
    overwrite: bool = False,
    mask: str = "none",
) -> dict[str, Any]:
    """Compute FSC/resolution and pose errors from files; write ``fsc.png`` and ``metrics.json``.

    Resolutions follow :meth:`cryoforge.metrics.fsc.FSCReport.summary`: ``resolution_{t}_angstrom``
    and ``_px`` (the Nyquist limit when the FSC never drops below ``t``, NaN, written as ``null``,
    when it is below ``t`` from the first shell), ``_bound`` (``None``, ``"nyquist"`` or
    ``"not_reached"``) and ``_text``; :func:`metric_rows` formats them for a table.

    ``mask`` (with ``half2_path``): ``"none"``, ``"auto"`` or an ``.mrc`` mask; then the half-map
    FSC is the masked one corrected by phase randomisation
    (:func:`~cryoforge.metrics.masked_fsc.corrected_masked_fsc`) and ``halfmap_unmasked_*`` the
    unmasked one.

    ``fsc.png`` and ``metrics.json`` must not exist in ``out_dir`` unless ``overwrite``; an
    input is never overwritten.
    """
    if mask != "none" and not half2_path:
        raise InputFileError(mask, "--mask applies to half maps: give --half2 too", "--mask")
    outputs = [out_dir / "metrics.json"] + ([out_dir / "fsc.png"] if ref_path or half2_path else [])
    refuse_input_overlap(outputs, [map_path, ref_path, half2_path, poses_path, gt_poses_path], "--output-dir")
    for p in outputs:
        refuse_existing(p, "--output-dir", overwrite)
    vol, px = read_map(map_path)
    m = torch.from_numpy(vol)
    metrics: dict[str, Any] = {"pixel_size_angstrom": px}
    A = mirrored = None
    if poses_path or gt_poses_path:
        if not (poses_path and gt_poses_path):
            raise InputFileError(poses_path or gt_poses_path, "give both --poses and --gt-poses", "--poses")
        pred, true = read_star(poses_path), read_star(gt_poses_path)
        for t in (pred, true):
            if t.rotations is None:
                raise InputFileError(t.path, "no poses in this file", "rlnAngleRot")
        if len(pred) != len(true):
            raise InputFileError(poses_path, f"{len(pred)} poses vs {len(true)} in {gt_poses_path}", "rows")
        pe = pose_errors(
            torch.from_numpy(pred.rotations),
            torch.from_numpy(true.rotations),
            torch.from_numpy(pred.shifts_angstrom),
            torch.from_numpy(true.shifts_angstrom),
            px,
            keep=true_particles(true, pred),
        )
        A, mirrored = pe.pop("_A"), pe["mirrored"]
        metrics.update(pe)
    curves = {}
    for label, other, align in (
        ("map vs reference", ref_path, True),
        ("half 1 vs half 2", half2_path, False),
    ):
        if not other:
            continue
        ref, ref_px = read_map(other)
        r = torch.from_numpy(ref)
        check_same_grid(other, tuple(r.shape), ref_px, map_path, tuple(m.shape), px)
        if align:
            al = align_map(m, r, A, mirrored) if A is not None else align_map(m, r)
            moved = al.aligned
            metrics["map_mirrored"] = al.mirrored
        else:
            moved = m
        rep = fsc_report(moved, r, px)
        prefix = "" if align else "halfmap_"
        if not align and mask != "none":
            from cryoforge.metrics.masked_fsc import corrected_masked_fsc, correction_text, resolve_mask

            mask_t, text = resolve_mask(mask, (moved.float() + r.float()) / 2, px, "--mask")
            metrics["halfmap_mask"] = text
            if mask_t is not None:
                mf = corrected_masked_fsc(moved.double(), r.double(), mask_t, px)
                metrics.update({"halfmap_unmasked_" + k: v for k, v in rep.summary((0.5, 0.143)).items()})
                metrics["halfmap_mask"] += correction_text(mf)
                metrics["halfmap_mask_fraction"] = mf.mask_fraction
                curves["half 1 vs half 2, unmasked"] = rep
                rep, label = mf.corrected, "half 1 vs half 2, masked"
        metrics.update({prefix + k: v for k, v in rep.summary((0.5, 0.143)).items()})
        curves[label] = rep
    out_dir.mkdir(parents=True, exist_ok=True)
    if curves:
        plot_fsc(curves, out_dir / "fsc.png")
        metrics["fsc_plot"] = str(out_dir / "fsc.png")
    write_json(out_dir / "metrics.json", metrics)
    return metrics
