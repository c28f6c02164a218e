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
    """``(L, L, L)`` map with the shells finer than ``resolution_angstrom`` removed (a hard cut at
    shell ``L · pixel / resolution``, a raised-cosine edge two shells wide)."""
    L = volume.shape[-1]
    cut = L * pixel_size_angstrom / resolution_angstrom
    s = np.arange(L // 2 + 1, dtype=float)
    w = np.clip((cut + 1.0 - s) / 2.0, 0.0, 1.0)
    w = 0.5 - 0.5 * np.cos(np.pi * w)
    return shell_filter(volume, torch.from_numpy(w))


def _ball_dilate(binary: torch.Tensor, radius_px: float) -> torch.Tensor:
    """``binary`` (bool ``(L, L, L)``) dilated by a ball of ``radius_px`` (FFT convolution; the box
    is treated as periodic, so keep masks away from its edge)."""
    if radius_px <= 0:
        return binary.clone()
    L = binary.shape[-1]
    r1 = torch.fft.fftfreq(L, 1.0 / L, dtype=torch.float64)  # 0, 1, …, −1: distances about voxel 0
    r = torch.sqrt(r1[:, None, None] ** 2 + r1[None, :, None] ** 2 + r1[None, None, :] ** 2)
    ball = (r <= radius_px).double()
    conv = torch.fft.irfftn(torch.fft.rfftn(binary.double()) * torch.fft.rfftn(ball), s=binary.shape)
    return conv > 0.5


def distance_to_mask_px(binary: torch.Tensor, max_px: float, step_px: float = 0.5) -> torch.Tensor:
    """Approximate distance (px) of every voxel to the nearest voxel of ``binary``: 0 inside, the
    smallest ball radius (in steps of ``step_px``) whose dilation reaches it outside, ``inf``
    beyond ``max_px``."""
    dist = torch.full(binary.shape, float("inf"), dtype=torch.float64)
    dist[binary] = 0.0
    r = step_px
    while r <= max_px + 1e-9:
        reached = _ball_dilate(binary, r) & torch.isinf(dist)
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
) -> torch.Tensor:
    """The automatic soft mask of a map (see :class:`AutoMaskSettings`).

    Parameters
    ----------
    average
        ``(L, L, L)`` map, protein positive (the average of the two half maps).
    pixel_size_angstrom
        Voxel size, Å.

    Returns
    -------
    torch.Tensor
        ``(L, L, L)`` float32 mask in [0, 1].
    """
    low = lowpass_map(average.double(), settings.lowpass_angstrom, pixel_size_angstrom)
    binary = low >= settings.threshold * float(low.max())
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


def resolve_mask(
    spec: str, average: torch.Tensor, pixel_size_angstrom: float
) -> tuple[torch.Tensor | None, str]:
    """The half-map mask named by ``train.halfmap_mask`` and its description: ``"auto"`` (the
    automatic mask of the half maps' ``average``, :func:`~cryoforge.metrics.masked_fsc.auto_mask`),
    ``"none"``, or an ``.mrc`` file of the maps' box (values in [0, 1])."""
    if spec == "none":
        return None, NO_MASK
    if spec == "auto":
        settings = AutoMaskSettings()
        return auto_mask(average, pixel_size_angstrom, settings), settings.describe()
    data, _ = read_map(spec)
    if data.shape != tuple(average.shape):
        raise InputFileError(
            spec, f"shape {data.shape}, the half maps' is {tuple(average.shape)}", "train.halfmap_mask"
        )
    return torch.from_numpy(np.clip(data, 0.0, 1.0)).float(), f"the mask file {spec}"
