"""Pose search against a voxel map: rotation grids, batched slices and likelihood scores.

Everything here is a pure function of tensors. The score of image ``i`` against projection ``j``
(CTF included) is the squared error ``‖Y_i − C_i P_j‖²`` up to the image's own constant
``‖Y_i‖²``, computed for all pairs as two matrix products: ``−2 Re((C·conj Y) @ P)`` and
``C² @ |P|²``.
"""

from __future__ import annotations

import math

import torch

from cryoforge.ops.rotations import euler_relion_to_matrix, quaternion_to_matrix


def fibonacci_directions(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` near-uniform directions on the sphere as RELION (rot, tilt) angles in degrees.

    Returns
    -------
    rot_deg, tilt_deg
        ``(n,)`` each; the viewing directions ``(cos rot sin tilt, sin rot sin tilt, cos tilt)``.
    """
    i = torch.arange(n, dtype=torch.float64) + 0.5
    cos_tilt = 1 - 2 * i / n
    golden = math.pi * (3 - math.sqrt(5))
    rot = torch.remainder(i * golden, 2 * math.pi)
    return torch.rad2deg(rot), torch.rad2deg(torch.arccos(cos_tilt))


def so3_grid(n_directions: int, n_inplane: int) -> torch.Tensor:
    """A near-uniform grid of ``n_directions · n_inplane`` rotations (RELION matrices).

    Directions come from a Fibonacci sphere and in-plane angles (psi) are evenly spaced; the grid
    spacing is about ``sqrt(4π / n_directions)`` rad in direction and ``360° / n_inplane`` in
    psi (768 × 48 ≈ 7.3° × 7.5°).

    Returns
    -------
    ``(n_directions · n_inplane, 3, 3)`` float64.
    """
    rot, tilt = fibonacci_directions(n_directions)
    psi = torch.arange(n_inplane, dtype=torch.float64) * (360.0 / n_inplane)
    R = euler_relion_to_matrix(
        rot[:, None].expand(-1, n_inplane).reshape(-1),
        tilt[:, None].expand(-1, n_inplane).reshape(-1),
        psi[None, :].expand(n_directions, -1).reshape(-1),
    )
    return R


def grid_spacing_deg(n_directions: int, n_inplane: int) -> float:
    """Typical spacing in degrees of :func:`so3_grid` (the larger of its two spacings)."""
    return max(math.degrees(math.sqrt(4 * math.pi / n_directions)), 360.0 / n_inplane)


def uniform_rotations(n: int) -> torch.Tensor:
    """``(n, 3, 3)`` rotations spread near-uniformly over SO(3), deterministically.

    Quaternions on a super-Fibonacci spiral (Alexa, CVPR 2022): point ``i`` has
    ``s = i + 1/2``, ``r = sqrt(s/n)``, ``R = sqrt(1 - s/n)``, angles ``2πs/√2`` and ``2πs/ψ``
    (``ψ ≈ 1.53375``, the root of ``ψ⁴ = ψ + 4``). Neighbouring rotations are about
    :func:`uniform_spacing_deg` apart. Unlike :func:`so3_grid` it has any number of points
    and no direction × in-plane structure (used where no slices are shared, e.g. map alignment).
    """
    s = torch.arange(n, dtype=torch.float64) + 0.5
    r, R = torch.sqrt(s / n), torch.sqrt(1 - s / n)
    alpha, beta = 2 * math.pi * s / math.sqrt(2), 2 * math.pi * s / 1.533751168755204288118041
    q = torch.stack([r * alpha.sin(), r * alpha.cos(), R * beta.sin(), R * beta.cos()], -1)
    return quaternion_to_matrix(q)


def uniform_spacing_deg(n: int) -> float:
    """Typical spacing (degrees) of ``n`` uniform rotations: the radius of a ball holding ``1/n`` of SO(3)."""
    return math.degrees((6 * math.pi / n) ** (1 / 3))


def local_rotations(step_deg: float, n: int = 1) -> torch.Tensor:
    """Small rotations ``exp(ω)`` for ``ω`` on a cubic grid ``{−n..n}³ · step`` (identity first).

    Returns
    -------
    ``((2n+1)³, 3, 3)`` float64; right-multiplying a pose by them perturbs it locally.
    """
    r = torch.arange(-n, n + 1, dtype=torch.float64) * math.radians(step_deg)
    w = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    order = torch.argsort(w.norm(dim=1), stable=True)
    w = w[order]
    theta = w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    k = w / theta
    K = torch.zeros(len(w), 3, 3, dtype=torch.float64)
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -k[:, 2], k[:, 1], -k[:, 0]
    K = K - K.transpose(1, 2)
    s, c = theta.sin()[..., None], theta.cos()[..., None]
    return torch.eye(3, dtype=torch.float64) + s * K + (1 - c) * (K @ K)


def pair_errors(images_ft: torch.Tensor, ctf: torch.Tensor | None, projections: torch.Tensor) -> torch.Tensor:
    """``‖Y_i − C_i P_j‖² − ‖Y_i‖²`` for every image ``i`` and projection ``j``.

    Parameters
    ----------
    images_ft
        ``(B, M)`` complex image spectra at ``M`` frequencies.
    ctf
        ``(B, M)`` real CTF values, or ``None`` (CTF-free).
    projections
        ``(J, M)`` complex central slices at the same frequencies.

    Returns
    -------
    ``(B, J)`` real errors (float32): :func:`pair_power` ``− 2 ·`` :func:`pair_cross`.
    """
    return pair_power(ctf, projections, len(images_ft)) - 2 * pair_cross(images_ft, ctf, projections)


def pair_power_batched(ctf: torch.Tensor | None, projections: torch.Tensor) -> torch.Tensor:
    """``Σ_m C_bm² |P_bkm|²`` when each image ``b`` has its own ``K`` candidates ``(B, K, M)``: ``(B, K)``."""
    power = projections.real.pow(2) + projections.imag.pow(2)
    if ctf is None:
        return power.sum(-1)
    return torch.einsum("bm,bkm->bk", ctf * ctf, power)


def pair_cross_batched(
    images_ft: torch.Tensor, ctf: torch.Tensor | None, projections: torch.Tensor
) -> torch.Tensor:
    """``Re Σ_m C_bm conj(Y_bm) P_bkm`` for ``(B, M)`` images and their own ``(B, K, M)`` candidates."""
    a = images_ft if ctf is None else images_ft * ctf
    return torch.einsum("bm,bkm->bk", a.conj(), projections).real


def shift_grid_px(extent_px: float, step_px: float) -> torch.Tensor:
    """In-plane offsets ``(x, y)`` on a square grid of ``step_px`` inside the disc of radius ``extent_px``.

    Returns
    -------
    ``(S, 2)`` float64 offsets in pixels, the zero offset first, then by increasing length.
    """
    n = math.floor(extent_px / step_px + 1e-9) if step_px > 0 else 0
    r = torch.arange(-n, n + 1, dtype=torch.float64) * step_px
    d = torch.stack(torch.meshgrid(r, r, indexing="xy"), -1).reshape(-1, 2)
    d = d[d.norm(dim=1) <= extent_px + 1e-9]
    return d[torch.argsort(d.norm(dim=1), stable=True)]


def pair_cross(images_ft: torch.Tensor, ctf: torch.Tensor | None, projections: torch.Tensor) -> torch.Tensor:
    """``Re Σ_m C_im conj(Y_im) P_jm`` for every image ``i`` and projection ``j``: ``(B, J)`` float32.

    The shift-dependent half of :func:`pair_errors` (``error = power − 2 · cross``); a translated
    image changes only this term, so a shift search repeats it with the power term computed once.
    """
    a = images_ft if ctf is None else images_ft * ctf
    a = torch.cat([a.real, a.imag], 1).float()
    p = torch.cat([projections.real, projections.imag], 1).float()
    return a @ p.T


def pair_power(ctf: torch.Tensor | None, projections: torch.Tensor, batch: int) -> torch.Tensor:
    """``Σ_m C_im² |P_jm|²`` for every image ``i`` (``batch`` of them when CTF-free) and projection ``j``."""
    power = (projections.real.pow(2) + projections.imag.pow(2)).float()
    if ctf is None:
        return power.sum(1)[None].expand(batch, -1)
    return (ctf * ctf).float() @ power.T
