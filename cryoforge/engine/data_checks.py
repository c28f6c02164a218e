"""Checks of the data at the start of a run, before any training: the ground-truth map fits the
particles, and what the source found suspicious in them (duplicates, constant images) is reported.

The checks of the run folder, the options and a resume are in :mod:`cryoforge.engine.preflight`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cryoforge.config import RunConfig
from cryoforge.errors import InputFileError
from cryoforge.io.mrc import read_voxel_size, stack_info
from cryoforge.roles import Source


def check_ground_truth_map(config: RunConfig, source: Source) -> None:
    """The map of ``ground_truth_map`` must cover the particles' box (same size in Å).

    A map of another box side is accepted when its extent matches (it is resampled like the
    data); one of another extent, or whose header has no voxel size and a box that is neither the
    stack's nor the downsampled one, is refused now rather than after the whole budget.

    Raises
    ------
    InputFileError
        Naming the map and ``ground_truth_map``, with both sizes.
    """
    if not config.ground_truth_map:
        return
    gt = Path(config.ground_truth_map)
    if not gt.is_file():
        raise InputFileError(
            gt, "map file not found" if not gt.exists() else "not a file", "ground_truth_map"
        )
    info = stack_info(gt)  # header only: a cube check, no data read
    L, px = info.size, read_voxel_size(config.ground_truth_map)
    if info.count != L:
        raise InputFileError(info.path, f"not a cubic map ({L}×{L}×{info.count})", "ground_truth_map")
    data_L = getattr(source, "original_size", source.image_size)
    data_px = getattr(source, "original_pixel_size_angstrom", source.pixel_size_angstrom)
    if px > 0:
        extent, data_extent = L * px, data_L * data_px
        if abs(extent / data_extent - 1) > 0.01:
            raise InputFileError(
                info.path,
                f"map is {L}³ at {px:.4g} Å/px ({extent:.4g} Å) but the particles are {data_L} px at "
                f"{data_px:.4g} Å/px ({data_extent:.4g} Å): another molecule's box or pixel size?",
                "ground_truth_map",
            )
    elif L not in (data_L, source.image_size):
        raise InputFileError(
            info.path,
            f"map is {L}³ with no voxel size in its header; the particles are {data_L} px",
            "ground_truth_map",
        )


def report_data_quality(source: Source) -> list[str]:
    """Warn on stderr, before training, about duplicates and constant images the source counted,
    implausible physical values it found, and a defocus that the particles' Thon rings contradict
    (:mod:`cryoforge.engine.ctf_check`; the run's log file is not open yet); returns the lines."""
    quality = getattr(source, "quality", None)
    notes = quality.messages() if quality is not None else []
    notes += list(getattr(source, "physical_warnings", []))
    from cryoforge.engine.ctf_check import ctf_warning

    ctf_note = ctf_warning(source)
    if ctf_note is not None:
        notes.append(ctf_note)
    for note in notes:
        print(f"Warning: {note}", file=sys.stderr, flush=True)
    return notes
