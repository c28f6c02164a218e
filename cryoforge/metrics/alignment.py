"""Map alignment: both hands, a global rotation search and a sub-pixel translation.

The rotation grid is :func:`cryoforge.ops.search.uniform_rotations`, the one the pose search of
the engine can use too; scores are correlations maximised over translations
(:mod:`cryoforge.metrics.translation`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cryoforge.metrics.resample import lowpass_resize, mirror_z, rotate_map, shift_map
from cryoforge.metrics.translation import (
    cc_peak,
    estimate_shift,
    map_correlation,
    maximise_shift,
    shift_terms,
)
from cryoforge.ops.rotations import geodesic_distance_deg, quaternion_to_matrix, rotvec_to_matrix
from cryoforge.ops.search import uniform_rotations, uniform_spacing_deg


@dataclass(frozen=True)
class _Level:
    """One resolution level of the rotation search: maps resampled to ``(n, n, n)``.

    ``moving`` is ``(1, 1, n, n, n)`` (for ``grid_sample``); ``coords`` ``(P, 3)`` are the
    ``(x, y, z)`` positions (px about ``n//2``) of the ``P`` voxels inside the inscribed sphere,
    ``index`` their flat indices; ``ref_spec`` ``(n, n, n//2 + 1)`` is the ``rfftn`` of the
    sphere-masked reference without its mean, ``ref_norm`` its norm. With ``subvoxel`` the
    translation of each score is maximised exactly (:func:`maximise_shift`), not only to the
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
    ref_n = lowpass_resize(ref, n, sigma_per_px).reshape(-1)
    masked = torch.zeros(n**3)
    masked[index] = ref_n[index]
    masked = masked - masked.mean()
    spec = torch.fft.rfftn(masked.reshape(n, n, n))
    return _Level(
        n=n,
        moving=lowpass_resize(moving, n, sigma_per_px)[None, None],
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
    keep, k, w = shift_terms(n) if level.subvoxel else (None, None, None)
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
        value, shift = cc_peak(cc / scale[:, None, None, None])
        if keep is not None:
            _, value = maximise_shift(cross.reshape(b, -1)[:, keep], k, w, shift, iters=4)
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
    return MapAlignment(aligned, bool(mirrored), rotation, map_correlation(aligned, ref), t)
