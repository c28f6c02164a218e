"""Masked half-map FSC, corrected by phase randomisation (Chen et al. 2013, Ultramicroscopy 135).

A soft mask around the molecule removes the solvent's noise from both half maps, so their FSC
measures the molecule's agreement; but the mask itself correlates the two maps (both are multiplied
by the same function, which spreads each Fourier coefficient over its neighbours). The correction
measures that spurious part: both half maps get independent random phases beyond the shell where
their unmasked FSC drops below 0.8 (RELION's ``randomize_fsc_at``), are masked, and their FSC
``FSC_n`` is what the mask alone makes of two unrelated maps. From two shells beyond that shell the
true FSC is ``(FSC_t − FSC_n) / (1 − FSC_n)``, ``FSC_t`` the masked FSC; below it ``FSC_t``.

The automatic mask follows cryoSPARC's dynamic mask: the average of the half maps low-passed,
thresholded at a fraction of its maximum, dilated by ``near`` Å and given a raised-cosine edge
out to ``far`` Å.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cryoforge.errors import InputFileError
from cryoforge.io.mrc import read_map
from cryoforge.metrics.fsc import FSCReport, fsc
from cryoforge.ops.filters import fourier_shells, shell_filter

NO_MASK = "none: no mask is applied, the FSC is unmasked"

RANDOMIZE_BELOW = 0.8
"""Phases are randomised from the first shell where the unmasked FSC falls below this (RELION's)."""


CORRECT_AFTER = 2
"""The correction starts this many shells beyond the first randomised one, as in RELION's
post-processing: right at the boundary the mask spreads the unrandomised shells' strong
correlation into the randomised ones, and ``FSC_n`` there says more about the boundary than about
the mask."""


@dataclass(frozen=True)
class AutoMaskSettings:
    """The automatic mask: low-pass (Å), threshold (fraction of the maximum), dilation ``near``
    (Å) and the outer end of the soft edge ``far`` (Å), cryoSPARC's dynamic-mask defaults."""

    lowpass_angstrom: float = 15.0
    threshold: float = 0.2
    near_angstrom: float = 6.0
    far_angstrom: float = 14.0

    def describe(self) -> str:
        return (
            f"automatic: the half maps' average low-passed to {self.lowpass_angstrom:.1f} Å, "
            f"thresholded at {self.threshold:g} of its maximum, dilated {self.near_angstrom:g} Å, "
            f"soft edge to {self.far_angstrom:g} Å"
        )


def lowpass_map(volume: torch.Tensor, resolution_angstrom: float, pixel_size_angstrom: float) -> torch.Tensor:
    """``(L, L, L)`` map low-passed at shell ``c = L · pixel / resolution``: shells up to ``c − 1``
    kept, a raised cosine from ``c − 1`` to ``c + 1`` (0.5 at ``c``), nothing beyond."""
    L = volume.shape[-1]
    cut = L * pixel_size_angstrom / resolution_angstrom
    s = np.arange(L // 2 + 1, dtype=float)
    w = np.clip((cut + 1.0 - s) / 2.0, 0.0, 1.0)
    w = 0.5 - 0.5 * np.cos(np.pi * w)
    return shell_filter(volume, torch.from_numpy(w))


def _ball_spectrum(shape: tuple[int, int, int], radius_px: float) -> torch.Tensor:
    """``rfftn`` of a ball of ``radius_px`` about voxel 0 of a periodic box of ``shape``."""
    axes = [torch.fft.fftfreq(n, 1.0 / n, dtype=torch.float64) for n in shape]  # 0, 1, …, −1
    r = torch.sqrt(axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2)
    return torch.fft.rfftn((r <= radius_px).double())


def distance_to_mask_px(binary: torch.Tensor, max_px: float, step_px: float = 0.5) -> torch.Tensor:
    """Approximate distance (px) of every voxel to the nearest voxel of ``binary``: 0 inside, the
    smallest ball radius (in steps of ``step_px``: at most ``step_px`` above the exact distance)
    whose dilation reaches it outside, ``inf`` beyond ``max_px``.

    Dilations are FFT convolutions in a box padded by ``max_px``, so nothing wraps round the edge.
    """
    pad = math.ceil(max_px) + 1
    L = binary.shape
    padded = torch.nn.functional.pad(binary.double()[None, None], (pad,) * 6)[0, 0]
    shape = tuple(padded.shape)
    spectrum = torch.fft.rfftn(padded)
    crop = tuple(slice(pad, pad + n) for n in L)
    dist = torch.full(L, float("inf"), dtype=torch.float64)
    dist[binary] = 0.0
    r = step_px
    while r <= max_px + 1e-9:
        conv = torch.fft.irfftn(spectrum * _ball_spectrum(shape, r), s=shape)[crop]
        reached = (conv > 0.5) & torch.isinf(dist)
        dist[reached] = r
        r += step_px
    return dist


def soft_mask_px(binary: torch.Tensor, near_px: float, edge_px: float) -> torch.Tensor:
    """``(L, L, L)`` float32 mask: 1 within ``near_px`` of ``binary``, a raised-cosine edge
    ``0.5 (1 + cos(π (d − near) / edge))`` out to ``near_px + edge_px``, 0 beyond (RELION's and
    cryoSPARC's soft mask)."""
    d = distance_to_mask_px(binary, near_px + edge_px)
    t = ((d - near_px) / max(edge_px, 1e-9)).clamp(0, 1)
    m = 0.5 * (1 + torch.cos(torch.pi * t))
    m[torch.isinf(d)] = 0.0
    return m.float()


def auto_mask(
    average: torch.Tensor, pixel_size_angstrom: float, settings: AutoMaskSettings = AutoMaskSettings()
) -> torch.Tensor | None:
    """The automatic soft mask of a map (see :class:`AutoMaskSettings`).

    Parameters
    ----------
    average
        ``(L, L, L)`` map, protein positive (the average of the two half maps).
    pixel_size_angstrom
        Voxel size, Å.

    Returns
    -------
    torch.Tensor | None
        ``(L, L, L)`` float32 mask in [0, 1]; ``None`` when there is nothing to mask: the map's
        strongest density is negative (inverted contrast), or every voxel passes the threshold.
    """
    low = lowpass_map(average.double(), settings.lowpass_angstrom, pixel_size_angstrom)
    top = float(low.max())
    binary = low >= settings.threshold * top
    if top <= -float(low.min()) or bool(binary.all()):  # negative density dominates, or flat
        return None
    near = settings.near_angstrom / pixel_size_angstrom
    edge = max(settings.far_angstrom - settings.near_angstrom, 0.0) / pixel_size_angstrom
    return soft_mask_px(binary, near, edge)


def randomize_phases_beyond(volume: torch.Tensor, shell: int, generator: torch.Generator) -> torch.Tensor:
    """``volume`` with the phases of every shell ``≥ shell`` replaced by random ones (amplitudes
    kept). The phases are those of a real white-noise map, so the result stays real."""
    F = torch.fft.fftn(volume.double())
    noise = torch.randn(volume.shape, generator=generator, dtype=torch.float64)
    phase = torch.fft.fftn(noise)
    phase = phase / phase.abs().clamp_min(1e-30)
    outer = fourier_shells(volume.shape[-1]) >= shell
    F = torch.where(outer, F.abs() * phase, F)
    return torch.fft.ifftn(F).real.to(volume.dtype)


@dataclass
class MaskedFSC:
    """The masked, phase-randomisation-corrected FSC and its parts (all ``(L//2 + 1,)`` curves).

    ``corrected`` is the one to quote; ``masked`` (``FSC_t``), ``randomized`` (``FSC_n``) and
    ``unmasked`` are kept for the plot and the record; ``randomize_from_shell`` is the first shell
    whose phases were randomised (``None``: the unmasked FSC never fell below 0.8, no correction);
    ``mask_fraction`` the mask's effective volume fraction ``⟨m²⟩² / ⟨m⁴⟩`` (the fraction of the box
    for a binary mask), which the masked curves' half-bit threshold counts.
    """

    corrected: FSCReport
    masked: FSCReport
    randomized: FSCReport | None
    unmasked: FSCReport
    randomize_from_shell: int | None
    mask_fraction: float


def corrected_masked_fsc(
    map1: torch.Tensor, map2: torch.Tensor, mask: torch.Tensor, pixel_size_angstrom: float, seed: int = 0
) -> MaskedFSC:
    """The masked half-map FSC corrected by phase randomisation (Chen et al. 2013).

    Parameters
    ----------
    map1, map2
        ``(L, L, L)`` half maps in the same frame.
    mask
        ``(L, L, L)`` soft mask in [0, 1].
    pixel_size_angstrom
        Voxel size, Å.
    seed
        Seed of the random phases (the correction is reproducible).

    Returns
    -------
    MaskedFSC
    """
    freqs, unmasked = fsc(map1, map2)
    m = mask.to(map1.dtype)
    _, masked = fsc(map1 * m, map2 * m)
    below = np.nonzero(unmasked[1:] < RANDOMIZE_BELOW)[0]
    rand_rep = None
    corrected = masked.copy()
    shell = None
    m2 = mask.double() ** 2
    frac = float(m2.mean() ** 2 / (m2**2).mean().clamp_min(1e-30))  # effective volume fraction
    if len(below):
        shell = int(below[0]) + 1
        g = torch.Generator().manual_seed(seed)
        r1 = randomize_phases_beyond(map1, shell, g)
        r2 = randomize_phases_beyond(map2, shell, g)
        _, rand = fsc(r1 * m, r2 * m)
        tail = slice(shell + CORRECT_AFTER, None)
        denom = np.maximum(1.0 - rand[tail], 1e-6)
        corrected[tail] = (masked[tail] - rand[tail]) / denom
        rand_rep = FSCReport(freqs, rand, pixel_size_angstrom)
    return MaskedFSC(
        FSCReport(freqs, corrected, pixel_size_angstrom, frac),
        FSCReport(freqs, masked, pixel_size_angstrom, frac),
        rand_rep,
        FSCReport(freqs, unmasked, pixel_size_angstrom),
        shell,
        frac,
    )


NO_AUTO_MASK = (
    "none: the automatic mask found nothing to mask (the strongest density is negative, or the "
    "whole box passes the threshold), the FSC is unmasked"
)


def read_mask_file(path: str, box: int, pixel_size_angstrom: float, field: str) -> np.ndarray:
    """A mask file's ``(box, box, box)`` values, checked: the maps' box and voxel size, values in
    [0, 1] (RELION refuses others too), not zero everywhere; an ``InputFileError`` naming ``path``
    and ``field`` otherwise."""
    data, px = read_map(path)
    if data.shape != (box,) * 3:
        raise InputFileError(path, f"shape {data.shape}, the maps' box is {box}", field)
    if abs(px - pixel_size_angstrom) > 1e-3 * pixel_size_angstrom:
        raise InputFileError(path, f"voxel size {px:g} Å, the maps' is {pixel_size_angstrom:g} Å", field)
    lo, hi = float(np.min(data)), float(np.max(data))
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1e-6 or hi > 1 + 1e-6:
        raise InputFileError(path, f"mask values must lie in [0, 1], found {lo:g} to {hi:g}", field)
    if hi <= 0:
        raise InputFileError(path, "the mask is zero everywhere", field)
    return data


def resolve_mask(
    spec: str, average: torch.Tensor, pixel_size_angstrom: float, field: str = "train.halfmap_mask"
) -> tuple[torch.Tensor | None, str]:
    """The half-map mask named by ``spec`` and its description: ``"auto"`` (the automatic mask of
    the half maps' ``average``, :func:`auto_mask`; none when it finds nothing to mask), ``"none"``,
    or an ``.mrc`` file of the maps' box and voxel size with values in [0, 1]."""
    if spec == "none":
        return None, NO_MASK
    if spec == "auto":
        settings = AutoMaskSettings()
        mask = auto_mask(average, pixel_size_angstrom, settings)
        return (None, NO_AUTO_MASK) if mask is None else (mask, settings.describe())
    data = read_mask_file(spec, average.shape[-1], pixel_size_angstrom, field)
    return torch.from_numpy(data.astype(np.float32)), f"the mask file {spec}"


def correction_text(result: MaskedFSC) -> str:
    """What the correction did, for ``halfmap_mask``: from which resolution the phases were
    randomised and the correction applied, or why the masked FSC is quoted uncorrected."""
    rep = result.corrected
    box_a = rep.box_size * rep.pixel_size_angstrom
    shell = result.randomize_from_shell
    if shell is None:
        return "; not corrected: the unmasked FSC stays above 0.8 up to Nyquist"
    if shell + CORRECT_AFTER > rep.box_size // 2:
        where = f"{box_a / shell:.1f} Å"
        return f"; not corrected: the unmasked FSC falls below 0.8 only at {where}, too near Nyquist"
    return (
        f"; corrected by phase randomisation (Chen et al. 2013): phases randomised from "
        f"{box_a / shell:.1f} Å, the correction applied from {box_a / (shell + CORRECT_AFTER):.1f} Å; "
        "the unmasked FSC is halfmap_unmasked_*"
    )
