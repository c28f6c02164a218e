"""A starting map for the global search: a reference low-passed to where it is trusted.

RELION's 3D auto-refine (``--ref``, ``--ini_high``) and cryoSPARC's homogeneous refinement start
both half sets from one reference, low-passed (typically to 30–60 Å) so that the halves share
nothing finer: beyond that frequency each half's map is built from its own particles alone, and
their FSC measures what the data support. The search stage does the same with
``initial_map`` and ``initial_lowpass_angstrom``.

The map is put on the data's grid (same voxel size; centre-cropped or zero-padded to the
particles' box), Fourier-cropped to the search box, low-passed with a raised-cosine edge one
Fourier pixel wide, and scaled so that its power in the lowest shells matches the search's own
first map (the rotational average of the data): a reference from another program has arbitrary
units, and the search's scores compare images with projections at the map's scale.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from cryoforge.config import RunConfig
from cryoforge.engine.evaluation import resample_map
from cryoforge.errors import InputFileError
from cryoforge.io.mrc import read_map
from cryoforge.ops.filters import fourier_shells, raised_cosine_shells, shell_filter


def configured_initial_map(config: RunConfig) -> str | None:
    """The default schedule's ``schedule.search.initial_map`` (``None``: none, or another schedule)."""
    search = config.schedule.options.get("search") if config.schedule.name == "abinit" else None
    return (search.get("initial_map") or None) if isinstance(search, dict) else None


VOXEL_TOLERANCE = 0.01
"""Largest relative difference between the map's voxel size and the particles' pixel size."""


def read_initial_map(path: str | Path, box_px: int, pixel_size_angstrom: float) -> torch.Tensor:
    """The map at ``path`` on the particles' grid: ``(box_px,)*3`` float64 ``[z, y, x]``.

    Raises
    ------
    InputFileError
        When the map's voxel size differs from ``pixel_size_angstrom`` by more than 1 %.
    """
    vol, voxel = read_map(path)
    if voxel > 0 and abs(voxel - pixel_size_angstrom) > VOXEL_TOLERANCE * pixel_size_angstrom:
        raise InputFileError(
            path,
            f"voxel size {voxel:.4g} Å, but the particles have {pixel_size_angstrom:.4g} Å/px; "
            "resample the map to the particles' pixel size first",
            "voxel size",
        )
    return centred_box(torch.from_numpy(np.ascontiguousarray(vol)).double(), box_px)


def centred_box(vol: torch.Tensor, box_px: int) -> torch.Tensor:
    """``vol`` ``(n, n, n)`` centre-cropped or zero-padded to ``(box_px,)*3``, keeping voxel ``n//2``
    at ``box_px//2`` (the centre of rotation of both grids)."""
    n = vol.shape[-1]
    out = torch.zeros((box_px,) * 3, dtype=vol.dtype)
    lo_src, lo_dst = max(0, n // 2 - box_px // 2), max(0, box_px // 2 - n // 2)
    m = min(n - lo_src, box_px - lo_dst)
    out[lo_dst : lo_dst + m, lo_dst : lo_dst + m, lo_dst : lo_dst + m] = vol[
        lo_src : lo_src + m, lo_src : lo_src + m, lo_src : lo_src + m
    ]
    return out


def lowpass_weights(size_px: int, box_angstrom: float, lowpass_angstrom: float) -> torch.Tensor:
    """``(size_px//2 + 1,)`` shell weights: 1 below ``box_angstrom / lowpass_angstrom`` Fourier px,
    a raised-cosine fall to 0 over the next Fourier pixel (shells in 1/``box_angstrom``)."""
    return raised_cosine_shells(size_px // 2 + 1, box_angstrom / lowpass_angstrom)


def initial_search_map(
    reference: torch.Tensor, size_px: int, box_angstrom: float, lowpass_angstrom: float, like: torch.Tensor
) -> torch.Tensor:
    """The search's starting map from ``reference`` ``(L, L, L)`` on the particles' grid.

    Parameters
    ----------
    reference
        The map on the particles' grid (:func:`read_initial_map`), any units.
    size_px
        The search box (px): the map is Fourier-cropped to it.
    box_angstrom
        Side of the box in Å (the particles' box × pixel size).
    lowpass_angstrom
        Resolution (Å) beyond which the reference is removed.
    like
        ``(size_px,)*3`` the search's own first map (rotational average of the data), whose power
        in shells 1–2 sets the scale.

    Returns
    -------
    torch.Tensor
        ``(size_px,)*3`` float32 map.
    """
    L = reference.shape[-1]
    vol = reference if size_px == L else resample_map(reference, size_px)
    vol = shell_filter(vol.double(), lowpass_weights(size_px, box_angstrom, lowpass_angstrom))
    shells = fourier_shells(size_px)
    low = (shells >= 1) & (shells <= 2)
    p_ref = torch.fft.fftn(vol)[low].abs().pow(2).sum()
    p_like = torch.fft.fftn(like.double())[low].abs().pow(2).sum()
    scale = math.sqrt(float(p_like) / float(p_ref)) if float(p_ref) > 0 else 1.0
    return (vol * scale).float()
