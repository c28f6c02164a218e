"""FSC and resolution: shells one Fourier pixel wide, threshold crossings without extrapolation,
:class:`FSCReport` (a curve with its pixel size and its resolution labels), the half-bit threshold
curve (van Heel & Schatz 2005) and the "no consistent structure" verdict of half maps."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from cryoforge.ops.filters import fourier_shells


def _shells(L: int) -> torch.Tensor:
    """Shell index ``round(|k|)`` of every voxel of the ``(L, L, L)`` FFT grid, flattened."""
    return fourier_shells(L).flatten()


def shell_voxel_counts(L: int) -> np.ndarray:
    """``(L//2 + 1,)`` number of voxels of the ``L³`` FFT grid in each shell of :func:`fsc`
    (both Friedel mates counted; shell 0 holds one voxel)."""
    shell = _shells(L)
    n = L // 2 + 1
    return np.bincount(shell[shell < n].numpy(), minlength=n).astype(np.int64)


def half_bit_curve(n_voxels: np.ndarray) -> np.ndarray:
    """The half-bit information threshold per shell (van Heel & Schatz 2005, J. Struct. Biol. 151,
    eq. 17 with ``SNR = 0.2071`` for 1/2 bit):

    ``T(n) = (0.2071 + 1.9102 / sqrt(n)) / (1.2071 + 0.9102 / sqrt(n))``

    ``n`` is the number of voxels in the shell (:func:`shell_voxel_counts`). It tends to 0.1716 for
    large shells and rises towards 1 for the few voxels of the lowest shells, where a correlation
    of noise alone is large. Shells with no voxel read 1.
    """
    n = np.asarray(n_voxels, dtype=float)
    with np.errstate(divide="ignore"):
        r = np.where(n > 0, 1.0 / np.sqrt(np.maximum(n, 1.0)), np.inf)
    t = (0.2071 + 1.9102 * r) / (1.2071 + 0.9102 * r)
    return np.where(n > 0, t, 1.0)


def fsc(map1: torch.Tensor, map2: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Fourier shell correlation by shells one Fourier pixel wide (RELION's shells).

    Voxel ``k`` (integer indices of the FFT grid) belongs to shell ``round(|k|)``; shells past
    ``L//2`` (the corners of the cube) are left out. Shell 0 holds only the mean and reads 1 by
    definition, as in RELION (its raw value would be ±1 from the signs of the two means).

    Parameters
    ----------
    map1, map2
        ``(L, L, L)`` real maps ``[z, y, x]``.

    Returns
    -------
    freqs
        ``(L//2 + 1,)`` shell frequencies in cycles/pixel (``i / L``; 0 … 0.5 for even L).
    values
        ``(L//2 + 1,)`` FSC per shell, ``values[0] == 1``.
    """
    L = map1.shape[-1]
    a = torch.fft.fftn(torch.as_tensor(map1, dtype=torch.float64))
    b = torch.fft.fftn(torch.as_tensor(map2, dtype=torch.float64))
    shell = _shells(L)
    n = L // 2 + 1
    keep = shell < n
    shell = shell[keep]
    a, b = a.flatten()[keep], b.flatten()[keep]
    num = torch.zeros(n, dtype=torch.float64).index_add_(0, shell, (a * b.conj()).real)
    pa = torch.zeros(n, dtype=torch.float64).index_add_(0, shell, a.abs() ** 2)
    pb = torch.zeros(n, dtype=torch.float64).index_add_(0, shell, b.abs() ** 2)
    values = (num / torch.sqrt(pa * pb).clamp_min(1e-30)).numpy()
    values[0] = 1.0
    return np.arange(n) / L, values


ResolutionBound = Literal["nyquist", "not_reached"]


@dataclass(frozen=True)
class FSCCrossing:
    """Where an FSC curve first drops below a threshold.

    Attributes
    ----------
    threshold
        The FSC threshold (0.5, 0.143, …).
    freq_per_px
        Crossing frequency in cycles/pixel, interpolated linearly between the two shells that
        bracket it; the last shell's frequency (Nyquist for even L) when ``bound == "nyquist"``;
        NaN when ``bound == "not_reached"``.
    bound
        ``None`` for a crossing inside the measured band; ``"nyquist"`` when the curve stays at or
        above the threshold up to the last shell (the resolution is at least that good: an upper
        bound on the resolution in Å); ``"not_reached"`` when the curve is already below the
        threshold at shell 1 (the resolution is worse than the box, ``L`` pixels).
    """

    threshold: float
    freq_per_px: float
    bound: ResolutionBound | None

    @property
    def resolution_px(self) -> float:
        """``1 / freq`` in pixels; NaN when not reached."""
        return 1.0 / self.freq_per_px if self.freq_per_px > 0 else math.nan

    def resolution_angstrom(self, pixel_size_angstrom: float) -> float:
        """Resolution in Å (the Nyquist limit when bounded there; NaN when not reached)."""
        return self.resolution_px * pixel_size_angstrom

    def label(self, pixel_size_angstrom: float, box_size: int | None = None) -> str:
        """Human-readable resolution: ``"6.4 Å"``, ``"≤ 6.0 Å (Nyquist)"`` or ``"not reached"``."""
        if self.bound == "not_reached":
            if box_size:
                return f"not reached (> {box_size * pixel_size_angstrom:.1f} Å)"
            return "not reached"
        text = f"{self.resolution_angstrom(pixel_size_angstrom):.1f} Å"
        return f"≤ {text} (Nyquist)" if self.bound == "nyquist" else text


def find_crossing(freqs: np.ndarray, values: np.ndarray, threshold: float) -> FSCCrossing:
    """First drop of an FSC curve below ``threshold``, without extrapolation.

    Shell 0 (the mean) is ignored. If shell ``i ≥ 2`` is the first below the threshold, the
    crossing is interpolated linearly between shells ``i - 1`` (at or above) and ``i`` (below).

    Parameters
    ----------
    freqs
        ``(n,)`` shell frequencies in cycles/pixel, ``freqs[0] == 0``.
    values
        ``(n,)`` FSC per shell.
    threshold
        FSC threshold.

    Returns
    -------
    The crossing; see :class:`FSCCrossing` for the ``"nyquist"`` and ``"not_reached"`` bounds.
    """
    freqs, values = np.asarray(freqs, dtype=float), np.asarray(values, dtype=float)
    if len(values) < 2 or values[1] < threshold:
        return FSCCrossing(threshold, math.nan, "not_reached")
    for i in range(2, len(values)):
        if values[i] < threshold:
            f0, f1, v0, v1 = freqs[i - 1], freqs[i], values[i - 1], values[i]
            return FSCCrossing(threshold, float(f0 + (v0 - threshold) / (v0 - v1) * (f1 - f0)), None)
    return FSCCrossing(threshold, float(freqs[-1]), "nyquist")


def resolution_at(freqs: np.ndarray, values: np.ndarray, threshold: float) -> float:
    """Frequency (cycles/pixel) where the FSC first drops below ``threshold`` (linear crossing).

    Never extrapolates: a curve that stays above the threshold returns the last shell's frequency
    (Nyquist, a bound), one below it from shell 1 returns NaN. Use :func:`find_crossing` to tell
    these cases apart.
    """
    return find_crossing(freqs, values, threshold).freq_per_px


@dataclass
class FSCReport:
    """An FSC curve with its pixel size: ``freqs`` and ``values`` ``(L//2 + 1,)``, cycles/pixel.

    ``voxel_fraction`` is the fraction of the box that carries independent voxels: 1 for unmasked
    maps, a mask's effective volume fraction for masked ones (the half-bit curve then counts
    ``fraction × n`` voxels per shell, as the noise of a masked map correlates that much more).
    """

    freqs: np.ndarray
    values: np.ndarray
    pixel_size_angstrom: float
    voxel_fraction: float = 1.0

    @property
    def box_size(self) -> int:
        """``L``, from the shell spacing ``1 / L``."""
        return round(1 / self.freqs[1]) if len(self.freqs) > 1 else 1

    def crossing(self, threshold: float) -> FSCCrossing:
        """Where the curve first drops below ``threshold`` (see :func:`find_crossing`)."""
        return find_crossing(self.freqs, self.values, threshold)

    def resolution_angstrom(self, threshold: float) -> float:
        """Resolution in Å; the Nyquist limit when never crossed, NaN when not reached."""
        return self.crossing(threshold).resolution_angstrom(self.pixel_size_angstrom)

    def resolution_label(self, threshold: float) -> str:
        """``"6.4 Å"``, ``"≤ 6.0 Å (Nyquist)"`` or ``"not reached (> 96.0 Å)"``."""
        return self.crossing(threshold).label(self.pixel_size_angstrom, self.box_size)

    @property
    def half_bit(self) -> np.ndarray:
        """The half-bit threshold of each shell (:func:`half_bit_curve`) for this box, with
        ``voxel_fraction`` of each shell's voxels."""
        n = shell_voxel_counts(self.box_size) * self.voxel_fraction
        return half_bit_curve(n)[: len(self.values)]

    def half_bit_crossing(self) -> FSCCrossing:
        """Where the curve first drops below the half-bit curve (``threshold`` is NaN: a curve).

        Same rules as :func:`find_crossing`: linear interpolation of ``FSC − T`` between the two
        shells that bracket the crossing, ``"nyquist"`` / ``"not_reached"`` at the ends.
        """
        c = find_crossing(self.freqs, self.values - self.half_bit, 0.0)
        return FSCCrossing(math.nan, c.freq_per_px, c.bound)

    def summary(self, thresholds: tuple[float, ...] = (0.5, 0.143)) -> dict[str, Any]:
        """Metrics per threshold ``t``.

        ``resolution_{t}_angstrom`` and ``resolution_{t}_px`` (floats: the Nyquist limit when the
        curve never drops below ``t``, NaN when it is below from shell 1), ``resolution_{t}_bound``
        (``None``, ``"nyquist"`` or ``"not_reached"``) and ``resolution_{t}_text`` (e.g.
        ``"≤ 6.0 Å (Nyquist)"``).
        """
        out: dict[str, Any] = {}
        for t in thresholds:
            c = self.crossing(t)
            out[f"resolution_{t}_angstrom"] = c.resolution_angstrom(self.pixel_size_angstrom)
            out[f"resolution_{t}_px"] = c.resolution_px
            out[f"resolution_{t}_bound"] = c.bound
            out[f"resolution_{t}_text"] = c.label(self.pixel_size_angstrom, self.box_size)
        return out


LOWEST_SHELLS = 3
"""Shells 1 … 3 (features larger than a third of the box) are not evidence of structure: any two
blobs of the same size and centre agree there (the envelope a search leaves on pure noise)."""


def consistent_structure(report: FSCReport, lowest_shells: int = LOWEST_SHELLS) -> bool:
    """Whether two half maps share structure: their FSC exceeds the half-bit curve at two
    consecutive shells beyond shell ``lowest_shells`` (in the shells of ``lowest_shells + 1``
    up to Nyquist).

    Noise alone crosses the half-bit curve of one shell now and then (it is about 3 σ of a
    correlation of noise for the shells of a 32-px box); two neighbours together rarely. A map
    whose FSC stays above the curve only in the lowest shells is a blob: the data show no
    consistent structure.
    """
    above = report.values > report.half_bit
    start = lowest_shells + 1
    return bool(np.any(above[start:-1] & above[start + 1 :])) if len(above) > start + 1 else False


def fsc_report(map1: torch.Tensor, map2: torch.Tensor, pixel_size_angstrom: float) -> FSCReport:
    """FSC of two ``(L, L, L)`` maps (see :func:`fsc`) with their voxel size in Å."""
    freqs, values = fsc(map1, map2)
    return FSCReport(freqs, values, pixel_size_angstrom)
