"""Metrics: FSC and resolution, map alignment (both hands), pose errors; tables, plots, JSON."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from cryoforge.io.atomic import atomic_path
from cryoforge.ops.projection import sample_volume
from cryoforge.ops.rotations import (
    align_rotations,
    geodesic_distance_deg,
    quaternion_to_matrix,
    rotvec_to_matrix,
)
from cryoforge.ops.search import uniform_rotations, uniform_spacing_deg

# ----------------------------------------------------------------------------- FSC and resolution


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
    f = torch.fft.fftfreq(L, dtype=torch.float64)
    kz, ky, kx = torch.meshgrid(f, f, f, indexing="ij")
    shell = torch.round(torch.sqrt(kx**2 + ky**2 + kz**2) * L).long().flatten()
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


# ----------------------------------------------------------------------------- resampling


def mirror_z(volume: torch.Tensor) -> torch.Tensor:
    """``V(Jx)`` with ``J = diag(1, 1, -1)`` about the centre voxel ``L//2``."""
    out = torch.flip(volume, dims=(0,))
    return torch.roll(out, 1, dims=0) if volume.shape[0] % 2 == 0 else out


def rotate_map(volume: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``W(x) = V(A x)`` (trilinear), about the centre voxel."""
    L = volume.shape[-1]
    r = torch.arange(L, dtype=torch.float32) - L // 2
    gz, gy, gx = torch.meshgrid(r, r, r, indexing="ij")
    pts = torch.stack([gx, gy, gz], -1) @ A.float().T
    return sample_volume(volume, pts)


def _rfft_freqs(L: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frequencies (cycles/pixel) of an ``rfftn`` of an ``(L, L, L)`` map, broadcastable:
    ``kz (L, 1, 1)``, ``ky (1, L, 1)``, ``kx (1, 1, L//2 + 1)``."""
    f = torch.fft.fftfreq(L, dtype=torch.float64)
    return f[:, None, None], f[None, :, None], torch.fft.rfftfreq(L, dtype=torch.float64)[None, None, :]


def shift_map(volume: torch.Tensor, shift_px: torch.Tensor | tuple[float, float, float]) -> torch.Tensor:
    """Periodic sub-pixel translation ``W(x) = V(x - t)`` by a Fourier phase ramp ``exp(-2πi k·t)``.

    The full complex FFT is used and the real part kept, so the Nyquist planes of an even box
    (``k = -1/2``, whose shift is ambiguous) are treated symmetrically.

    Parameters
    ----------
    volume
        ``(L, L, L)`` real map ``[z, y, x]``.
    shift_px
        ``(3,)`` translation ``t = (x, y, z)`` in pixels; integer shifts equal ``torch.roll``.

    Returns
    -------
    ``(L, L, L)`` translated map, same dtype as ``volume``.
    """
    L = volume.shape[-1]
    t = torch.as_tensor(shift_px, dtype=torch.float64)
    f = torch.fft.fftfreq(L, dtype=torch.float64)
    phase = -2 * math.pi * (f[None, None, :] * t[0] + f[None, :, None] * t[1] + f[:, None, None] * t[2])
    spec = torch.fft.fftn(volume.double()) * torch.polar(torch.ones_like(phase), phase)
    return torch.fft.ifftn(spec).real.to(volume.dtype)


def _lowpass_resize(volume: torch.Tensor, size: int, sigma_per_px: float | None = None) -> torch.Tensor:
    """Fourier-crop an ``(L, L, L)`` map to ``(size,)*3`` (same box, coarser voxels), optionally
    with a Gaussian low-pass ``exp(-|k|² / 2σ²)``, ``σ`` in cycles per *output* pixel.

    Returns ``(size, size, size)`` float32; the centre voxel ``L//2`` maps to ``size//2``.
    """
    L = volume.shape[-1]
    spec = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(volume.double())))
    c, h = L // 2, size // 2
    spec = spec[c - h : c - h + size, c - h : c - h + size, c - h : c - h + size]
    if sigma_per_px is not None:
        k = (torch.arange(size, dtype=torch.float64) - size // 2) / size
        k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
        spec = spec * torch.exp(-k2 / (2 * sigma_per_px**2))
    out = torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(spec))).real
    return (out * (size / L) ** 3).float()


# ----------------------------------------------------------------------------- translation


def _cc_peak(cc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Peaks of periodic cross-correlation maps, refined by a parabola through each axis' neighbours.

    Parameters
    ----------
    cc
        ``(B, n, n, n)`` correlation ``c[t] = Σ_x a(x - t) b(x)`` at integer shifts ``t``.

    Returns
    -------
    value
        ``(B,)`` interpolated peak values.
    shift
        ``(B, 3)`` peak positions ``(x, y, z)`` in voxels, each in ``[-n/2 - 0.5, n/2)``.
    """
    B, n = cc.shape[0], cc.shape[-1]
    c0, idx = cc.reshape(B, -1).max(1)
    ijk = [idx // (n * n), (idx // n) % n, idx % n]  # z, y, x
    b = torch.arange(B)
    value, shift = c0.clone(), []
    for d in (2, 1, 0):  # x, y, z
        lo, hi = list(ijk), list(ijk)
        lo[d], hi[d] = (ijk[d] - 1) % n, (ijk[d] + 1) % n
        cm, cp = cc[b, lo[0], lo[1], lo[2]], cc[b, hi[0], hi[1], hi[2]]
        curv = cm - 2 * c0 + cp
        ok = curv < 0
        delta = torch.where(ok, 0.5 * (cm - cp) / torch.where(ok, curv, -1.0), 0.0).clamp(-0.5, 0.5)
        value = value + 0.5 * (cp - cm) * delta + 0.5 * curv * delta**2
        shift.append(((ijk[d] + n // 2) % n - n // 2).to(cc.dtype) + delta)
    return value, torch.stack(shift, -1)


def _shift_terms(L: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``rfftn`` terms of an ``(L, L, L)`` map that enter a sub-pixel correlation.

    Returns ``keep`` (flat boolean mask over the ``L·L·(L//2 + 1)`` terms), their frequencies
    ``k`` ``(M, 3)`` as ``(x, y, z)`` in cycles/pixel and weights ``w`` ``(M,)`` (2 for the terms
    standing for ``±k``, 1 on the ``kx = 0`` plane). The mean and the Nyquist planes, whose phase
    is undefined for sub-pixel shifts, are left out.
    """
    kz, ky, kx = _rfft_freqs(L)
    k = torch.stack(torch.broadcast_tensors(kx, ky, kz), -1).reshape(-1, 3)
    keep = (k.abs() < 0.5).all(-1) & (k.abs().sum(-1) > 0)
    k = k[keep]
    return keep, k, torch.where(k[:, 0] == 0, 1.0, 2.0).double()


def _maximise_shift(
    cross: torch.Tensor, k: torch.Tensor, w: torch.Tensor, start: torch.Tensor, iters: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximise ``c(t) = Σ_k w Re[P(k) exp(2πi k·t)]`` over continuous shifts ``t`` (Newton steps).

    ``c`` is the Fourier interpolation of the periodic cross-correlation ``Σ_x a(x - t) b(x)``
    (times the number of voxels) when ``P = conj(rfftn(a)) · rfftn(b)``.

    Parameters
    ----------
    cross
        ``(B, M)`` cross-power terms ``P`` selected by :func:`_shift_terms`.
    k, w
        ``(M, 3)`` frequencies ``(x, y, z)`` in cycles/pixel and ``(M,)`` weights.
    start
        ``(B, 3)`` initial shifts in pixels (e.g. from :func:`_cc_peak`).

    Returns
    -------
    shift
        ``(B, 3)`` shifts in pixels; ``start`` where Newton did not improve on it.
    value
        ``(B,)`` ``c`` at those shifts.
    """
    k, w = k.to(cross.real.dtype), w.to(cross.real.dtype)
    kk = (k[:, :, None] * k[:, None, :]).reshape(-1, 9)  # k kᵀ per term, for the Hessian

    def terms(t: torch.Tensor) -> torch.Tensor:
        phase = 2 * math.pi * (t.to(k.dtype) @ k.T)
        return cross * torch.polar(torch.ones_like(phase), phase)

    t0 = start.to(k.dtype)
    v0 = (terms(t0).real * w).sum(-1)
    t = t0.clone()
    for _ in range(iters):
        E = terms(t)
        grad = -2 * math.pi * (E.imag * w) @ k
        hess = -4 * math.pi**2 * ((E.real * w) @ kk).reshape(-1, 3, 3)
        concave = torch.linalg.eigvalsh(hess).amax(-1) < 0
        eye = torch.eye(3, dtype=k.dtype)
        step = -torch.linalg.solve(torch.where(concave[:, None, None], hess, -eye), grad[..., None])[..., 0]
        step = torch.where(concave[:, None], step, 0.0)
        norm = step.norm(dim=-1, keepdim=True)
        t = t + step * (0.5 / norm.clamp_min(0.5))
        if float(norm.max()) < 1e-6:
            break
    v = (terms(t).real * w).sum(-1)
    better = v >= v0
    return torch.where(better[:, None], t, t0), torch.where(better, v, v0)


def estimate_shift(
    moving: torch.Tensor, ref: torch.Tensor, sigma_per_px: float | None = None
) -> torch.Tensor:
    """Sub-pixel translation ``t`` maximising ``Σ_x moving(x - t) · ref(x)`` (periodic).

    The integer cross-correlation peak, refined by a parabola, starts Newton steps on the
    Fourier-interpolated correlation, so ``t`` is exact for band-limited maps.

    Parameters
    ----------
    moving, ref
        ``(L, L, L)`` maps ``[z, y, x]``.
    sigma_per_px
        Optional Gaussian low-pass ``exp(-|k|² / 2σ²)`` of both maps (σ in cycles/pixel) before
        correlating: high frequencies damaged by interpolation then cannot bias ``t``.

    Returns
    -------
    ``(3,)`` float64 ``(x, y, z)`` in pixels; ``shift_map(moving, t)`` matches ``ref``.
    """
    cross = torch.fft.rfftn(moving.double()).conj() * torch.fft.rfftn(ref.double())
    if sigma_per_px is not None:
        kz, ky, kx = _rfft_freqs(moving.shape[-1])
        cross = cross * torch.exp(-(kx**2 + ky**2 + kz**2) / sigma_per_px**2)
    _, start = _cc_peak(torch.fft.irfftn(cross, s=moving.shape)[None])
    keep, k, w = _shift_terms(moving.shape[-1])
    shift, _ = _maximise_shift(cross.reshape(1, -1)[:, keep], k, w, start, iters=20)
    return shift[0]


def translate_align(moving: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Sub-pixel translation maximising the cross-correlation; returns the moved map and the CC."""
    moved = shift_map(moving, estimate_shift(moving, ref))
    return moved, _corr(moved, ref)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()).clamp_min(1e-30))


# ----------------------------------------------------------------------------- rotation search


@dataclass(frozen=True)
class _Level:
    """One resolution level of the rotation search: maps resampled to ``(n, n, n)``.

    ``moving`` is ``(1, 1, n, n, n)`` (for ``grid_sample``); ``coords`` ``(P, 3)`` are the
    ``(x, y, z)`` positions (px about ``n//2``) of the ``P`` voxels inside the inscribed sphere,
    ``index`` their flat indices; ``ref_spec`` ``(n, n, n//2 + 1)`` is the ``rfftn`` of the
    sphere-masked reference without its mean, ``ref_norm`` its norm. With ``subvoxel`` the
    translation of each score is maximised exactly (:func:`_maximise_shift`), not only to the
    parabolic estimate of the correlation peak, whose error depends on the fractional shift.
    """

    n: int
    moving: torch.Tensor
    coords: torch.Tensor
    index: torch.Tensor
    ref_spec: torch.Tensor
    ref_norm: float
    subvoxel: bool


def _make_level(
    moving: torch.Tensor, ref: torch.Tensor, n: int, sigma_per_px: float | None, subvoxel: bool
) -> _Level:
    """Both maps Fourier-cropped to ``n`` voxels and low-passed (``σ`` in cycles per level voxel)."""
    r = torch.arange(n, dtype=torch.float32) - n // 2
    gz, gy, gx = torch.meshgrid(r, r, r, indexing="ij")
    xyz = torch.stack([gx, gy, gz], -1).reshape(-1, 3)
    index = torch.nonzero(xyz.norm(dim=-1) < n / 2).squeeze(1)
    ref_n = _lowpass_resize(ref, n, sigma_per_px).reshape(-1)
    masked = torch.zeros(n**3)
    masked[index] = ref_n[index]
    masked = masked - masked.mean()
    spec = torch.fft.rfftn(masked.reshape(n, n, n))
    return _Level(
        n=n,
        moving=_lowpass_resize(moving, n, sigma_per_px)[None, None],
        coords=xyz[index],
        index=index,
        ref_spec=spec,
        ref_norm=float(masked.norm()),
        subvoxel=subvoxel,
    )


def _score_rotations(level: _Level, rotations: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Normalised cross-correlation with the reference, maximised over translations (sub-voxel).

    Parameters
    ----------
    level
        Maps at one resolution.
    rotations
        ``(B, 3, 3)`` matrices ``A``; the moving map is scored as ``W(x) = V(A x)`` inside the sphere.

    Returns
    -------
    ``(B,)`` correlation coefficients.
    """
    n, out = level.n, []
    keep, k, w = _shift_terms(n) if level.subvoxel else (None, None, None)
    for A in rotations.float().split(chunk):
        b = A.shape[0]
        pts = level.coords @ A.transpose(-1, -2)  # (b, P, 3): rows A x
        grid = (pts + n // 2) * (2.0 / (n - 1)) - 1
        vals = F.grid_sample(
            level.moving,
            grid.reshape(1, 1, 1, -1, 3),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=True,
        ).reshape(b, -1)
        vol = torch.zeros(b, n**3)
        vol[:, level.index] = vals
        norm = torch.sqrt((vals**2).sum(1) - vals.sum(1) ** 2 / n**3).clamp_min(1e-20)
        spec = torch.fft.rfftn(vol.reshape(b, n, n, n), dim=(1, 2, 3))
        cross = spec.conj() * level.ref_spec
        scale = norm * level.ref_norm
        cc = torch.fft.irfftn(cross, s=(n, n, n), dim=(1, 2, 3))
        value, shift = _cc_peak(cc / scale[:, None, None, None])
        if keep is not None:
            _, value = _maximise_shift(cross.reshape(b, -1)[:, keep], k, w, shift, iters=4)
            value = value / (n**3 * scale)
        out.append(value)
    return torch.cat(out)


# Gaussian low-pass σ of the maps that refine rotations (cycles per voxel of the size being
# refined) and the final translation (cycles/pixel of the map). The highest frequencies of a
# resampled map carry interpolation errors that depend on the sub-voxel sampling positions; left
# in, they pull the correlation maximum off the true pose (by up to ~3° and ~0.1 px on a 32³
# atomic-model map, against ~0.3° and ~0.02 px with this filter).
_REFINE_SIGMA_PER_PX = 0.12


def _search_axes() -> torch.Tensor:
    """``(18, 3)`` unit rotation axes of the pattern search: ±x, ±y, ±z and the 12 face diagonals."""
    eye = torch.eye(3, dtype=torch.float64)
    axes = [s * eye[i] for i in range(3) for s in (1, -1)]
    axes += [
        (s * eye[i] + t * eye[j]) / math.sqrt(2)
        for i in range(3)
        for j in range(i + 1, 3)
        for s in (1, -1)
        for t in (1, -1)
    ]
    return torch.stack(axes)


def _halvings(start_deg: float, stop_deg: float) -> list[float]:
    """``start, start/2, …`` down to the first value ``≤ stop`` (degrees)."""
    steps = [start_deg]
    while steps[-1] > stop_deg:
        steps.append(steps[-1] / 2)
    return steps


def _finest_step_deg(n: int) -> float:
    """Final angular step at an ``n``-voxel level: 0.05 voxel of arc at the sphere's edge."""
    return math.degrees(0.05 / (n / 2))


def _refine_rotation(
    level: _Level, A: torch.Tensor, steps_deg: list[float], max_moves: int = 6
) -> tuple[torch.Tensor, float]:
    """Pattern search around ``A``: move along the best of 18 axes while it improves, halve the step.

    Returns the refined ``(3, 3)`` rotation and its score at this level.
    """
    A = A.double()
    score = float(_score_rotations(level, A[None])[0])
    for step in steps_deg:
        D = rotvec_to_matrix(_search_axes() * math.radians(step))
        for _ in range(max_moves):
            cands = A @ D
            values = _score_rotations(level, cands)
            j = int(values.argmax())
            if float(values[j]) <= score:
                break
            A, score = cands[j], float(values[j])
    return A, score


def _distinct_best(values: torch.Tensor, rotations: torch.Tensor, k: int, min_deg: float) -> list[int]:
    """Indices of the ``k`` best-scoring rotations at least ``min_deg`` from each other."""
    picked: list[int] = []
    for i in torch.argsort(values, descending=True).tolist():
        if (
            picked
            and geodesic_distance_deg(rotations[picked], rotations[i].expand(len(picked), 3, 3)).min()
            < min_deg
        ):
            continue
        picked.append(i)
        if len(picked) == k:
            break
    return picked


def _level_sizes(L: int, coarse_size: int, max_refine_size: int) -> tuple[int, list[int]]:
    """Size of the global search (even when cropped) and the refinement sizes after it.

    Refinement doubles from ``2 · coarse`` and always ends at ``min(L, max_refine_size)``
    (e.g. ``L = 32``: 16, then 32; ``L = 128``: 16, then 32 and 64).
    """
    coarse = L if L <= coarse_size else coarse_size - coarse_size % 2
    top = L if L <= max_refine_size else max(max_refine_size - max_refine_size % 2, coarse)
    fine, n = [], 2 * coarse
    while n < top:
        fine.append(n)
        n *= 2
    return coarse, [*fine, top]


def _refine_level(
    moving: torch.Tensor,
    ref: torch.Tensor,
    n: int,
    start_deg: float,
    starts: list[tuple[torch.Tensor, float]],
) -> list[tuple[torch.Tensor, float]]:
    """Refine rotations at size ``n`` from steps of ``start_deg``; best first, scores at size ``n``."""
    level = _make_level(moving, ref, n, sigma_per_px=_REFINE_SIGMA_PER_PX, subvoxel=True)
    steps = _halvings(start_deg, _finest_step_deg(n))
    return sorted((_refine_rotation(level, A, steps) for A, _ in starts), key=lambda x: -x[1])


def _search_hand(
    moving: torch.Tensor,
    ref: torch.Tensor,
    grid: torch.Tensor,
    coarse_size: int,
    first_fine: int,
    n_candidates: int,
    n_fine: int,
) -> tuple[torch.Tensor, float]:
    """Global search of one hand: the uniform grid at low resolution, the ``n_candidates`` best
    distinct rotations refined there, the ``n_fine`` best of those refined at ``first_fine``.

    Returns the best ``(3, 3)`` rotation and its score at the last size used.
    """
    spacing = uniform_spacing_deg(len(grid))
    coarse = _make_level(moving, ref, coarse_size, sigma_per_px=0.2, subvoxel=False)
    values = _score_rotations(coarse, grid)
    picks = _distinct_best(values, grid, n_candidates, 1.5 * spacing)
    steps = _halvings(spacing / 2, _finest_step_deg(coarse_size))
    found = sorted((_refine_rotation(coarse, grid[i], steps) for i in picks), key=lambda x: -x[1])
    found = _refine_level(moving, ref, first_fine, 8 * _finest_step_deg(coarse_size), found[:n_fine])
    return found[0]


@dataclass
class MapAlignment:
    """A map brought onto a reference: ``aligned(x) = moving'(A (x - t))``.

    ``moving'`` is ``moving`` or, when ``mirrored``, :func:`mirror_z` of it; ``A`` is
    ``rotation`` ``(3, 3)``; ``t`` is ``shift_px`` ``(3,)``, ``(x, y, z)`` in pixels.
    ``correlation`` is the real-space correlation coefficient of ``aligned`` with the reference.
    """

    aligned: torch.Tensor
    mirrored: bool
    rotation: torch.Tensor
    correlation: float
    shift_px: torch.Tensor = field(default_factory=lambda: torch.zeros(3, dtype=torch.float64))


def align_map(
    moving: torch.Tensor,
    ref: torch.Tensor,
    rotation: torch.Tensor | None = None,
    mirrored: bool | None = None,
    n_search: int = 2000,
    seed: int = 0,
    *,
    n_candidates: int = 4,
    coarse_size: int = 16,
    max_refine_size: int = 64,
) -> MapAlignment:
    """Align ``moving`` onto ``ref``: both hands, a global rotation, then a sub-pixel translation.

    With ``rotation``/``mirrored`` (from :func:`cryoforge.ops.rotations.align_rotations` on the
    poses, ``true ≈ pred' · A``) the map is mirrored if needed and resampled at ``A x``.

    Without, a blind search per hand (the map as is, and :func:`mirror_z` of it):

    1. ``n_search`` rotations of a uniform grid (:func:`uniform_rotations`, ~12° apart for 2000),
       scored on maps Fourier-cropped to ``coarse_size`` voxels and low-passed, by the correlation
       maximised over translations (FFT, parabolic peak);
    2. the ``n_candidates`` best distinct rotations refined there by a pattern search (18 axes,
       halving steps);
    3. the best two refined at the next size (``2 · coarse_size`` or ``L``; maps low-passed,
       translations maximised exactly by Newton steps on the Fourier-interpolated correlation).

    The hand with the higher correlation after step 3 wins; only its rotation is refined further
    at doubling sizes up to ``min(L, max_refine_size)``. Every score is a correlation maximised
    over translations, so the maps need not be centred alike. Last, the full map is rotated
    (trilinear) and translated by the sub-pixel correlation peak (:func:`estimate_shift`,
    applied as a Fourier phase ramp).

    Parameters
    ----------
    moving, ref
        ``(L, L, L)`` maps ``[z, y, x]``.
    rotation, mirrored
        Known ``(3, 3)`` alignment from the poses (both or neither).
    n_search
        Rotations per hand in the global grid (2000: a 32³ map aligns in a few seconds on a CPU).
    seed
        ``0``: the grid as is; otherwise the grid is turned by a random rotation from this seed.
    n_candidates
        Distinct coarse maxima refined per hand.
    coarse_size, max_refine_size
        Box sizes (voxels) of the global search and of the finest refinement.

    Returns
    -------
    The alignment; ``aligned`` is ``(L, L, L)`` float32.
    """
    moving, ref = moving.float(), ref.float()
    if rotation is None:
        grid = uniform_rotations(n_search)
        if seed:
            q = torch.randn(1, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            grid = grid @ quaternion_to_matrix(q)[0]
        coarse, fine = _level_sizes(moving.shape[-1], coarse_size, max_refine_size)
        best: tuple[float, bool, torch.Tensor] | None = None
        for mir in (False, True):
            m = mirror_z(moving) if mir else moving
            A, score = _search_hand(m, ref, grid, coarse, fine[0], n_candidates, n_fine=2)
            if best is None or score > best[0]:
                best = (score, mir, A)
        assert best is not None
        score, mirrored, rotation = best
        m = mirror_z(moving) if mirrored else moving
        for prev_n, n in itertools.pairwise(fine):  # only the winner at finer sizes
            start = 4 * _finest_step_deg(prev_n)
            ((rotation, score),) = _refine_level(m, ref, n, start, [(rotation, score)])
    m = mirror_z(moving) if mirrored else moving
    rotated = rotate_map(m, rotation)
    t = estimate_shift(rotated, ref, _REFINE_SIGMA_PER_PX)
    aligned = shift_map(rotated, t)
    return MapAlignment(aligned, bool(mirrored), rotation, _corr(aligned, ref), t)


# ----------------------------------------------------------------------------- poses


def pose_errors(
    pred_rot: torch.Tensor,
    true_rot: torch.Tensor,
    pred_shift_a: torch.Tensor | None = None,
    true_shift_a: torch.Tensor | None = None,
    pixel_size_angstrom: float = 1.0,
) -> dict[str, float]:
    """cryoAI's pose metrics after the best global alignment over both hands.

    Returns the median squared Frobenius norm ``‖R_pred A − R_true‖²``, the median and mean
    angular error in degrees, the hand, and (when shifts are given) the mean squared translation
    error in px² and Å².
    """
    A, mirrored, aligned = align_rotations(pred_rot.double(), true_rot.double())
    frob = (aligned - true_rot.double()).pow(2).sum((-1, -2))
    ang = geodesic_distance_deg(aligned, true_rot)
    out = {
        "rot_median_frobenius2": float(frob.median()),
        "rot_median_deg": float(ang.median()),
        "rot_mean_deg": float(ang.mean()),
        "mirrored": bool(mirrored),
    }
    if pred_shift_a is not None and true_shift_a is not None:
        d2 = (pred_shift_a.double() - true_shift_a.double()).pow(2).sum(-1).mean()
        out["trans_mse_angstrom2"] = float(d2)
        out["trans_mse_px2"] = float(d2) / pixel_size_angstrom**2
    out["_A"] = A  # type: ignore[assignment]
    return out


# ----------------------------------------------------------------------------- reports


@dataclass
class FSCReport:
    """An FSC curve with its pixel size: ``freqs`` and ``values`` ``(L//2 + 1,)``, cycles/pixel."""

    freqs: np.ndarray
    values: np.ndarray
    pixel_size_angstrom: float

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


def fsc_report(map1: torch.Tensor, map2: torch.Tensor, pixel_size_angstrom: float) -> FSCReport:
    """FSC of two ``(L, L, L)`` maps (see :func:`fsc`) with their voxel size in Å."""
    freqs, values = fsc(map1, map2)
    return FSCReport(freqs, values, pixel_size_angstrom)


def plot_fsc(
    curves: dict[str, FSCReport], path: str | Path, thresholds: tuple[float, ...] = (0.5, 0.143)
) -> None:
    """Write an FSC plot (PNG): spatial frequency in Å⁻¹, the thresholds as dashed lines, and
    each crossing marked with its resolution in Å as :meth:`FSCReport.resolution_label` reports
    it (``"≤ 6.0 Å (Nyquist)"`` at the edge; ``"not reached (> 96.0 Å)"``, with no line, when the
    curve is below the threshold from the first shell: never a resolution coarser than the box)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (label, rep) in enumerate(curves.items()):
        res = ", ".join(f"{t}: {rep.resolution_label(t)}" for t in thresholds)
        color = f"C{i}"
        ax.plot(rep.freqs / rep.pixel_size_angstrom, rep.values, color=color, label=f"{label} ({res})")
        for t in thresholds:
            c = rep.crossing(t)
            if c.bound == "not_reached":
                continue
            f = c.freq_per_px / rep.pixel_size_angstrom
            ax.plot([f], [t], "o", color=color, ms=4)
            ax.annotate(
                f"{rep.resolution_label(t)}",
                (f, t),
                textcoords="offset points",
                xytext=(-4, 6 + 12 * i),
                ha="right",
                fontsize=7,
                color=color,
            )
    for t in thresholds:
        ax.axhline(t, ls="--", lw=0.8, color="gray")
        ax.text(
            1.0,
            t + 0.01,
            f"FSC {t}",
            fontsize=7,
            color="gray",
            ha="right",
            transform=ax.get_yaxis_transform(),
        )
    if curves:
        ax.set_xlim(0, max(r.freqs[-1] / r.pixel_size_angstrom for r in curves.values()))
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


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
