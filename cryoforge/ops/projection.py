"""Real-space projection and Fourier-space backprojection with known poses.

These are independent of the learned rendering path (which slices a Fourier representation):
simulation projects in real space, and the known-pose reconstruction grids image spectra into a 3D
Fourier grid. Agreement between them is a test of the conventions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cryoforge.ops.fft import fourier_to_volume, rfft2_images
from cryoforge.ops.grids import half_plane_query
from cryoforge.ops.slicing import central_slice_coords


def _pixel_coords_3d(L: int, device: torch.device | str | None = None) -> torch.Tensor:
    r = torch.arange(L, device=device, dtype=torch.float32) - L // 2
    gz, gy, gx = torch.meshgrid(r, r, r, indexing="ij")
    return torch.stack([gx, gy, gz], -1)  # [z, y, x, (x, y, z)]


def sample_volume(volume: torch.Tensor, points_px: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of ``(L, L, L)`` real or complex ``[z, y, x]`` data at ``(..., 3)`` points.

    Points are ``(x, y, z)`` in pixels relative to the centre voxel ``L//2``; outside is zero.
    """
    L = volume.shape[-1]
    grid = (points_px + L // 2) * (2.0 / (L - 1)) - 1
    shape = grid.shape[:-1]
    g = grid.reshape(1, 1, 1, -1, 3).to(torch.float32)
    if volume.is_complex():
        vol = torch.stack([volume.real, volume.imag]).float()
    else:
        vol = volume.float()[None]
    out = F.grid_sample(vol[None], g, mode="bilinear", padding_mode="zeros", align_corners=True)
    out = out.reshape(vol.shape[0], *shape)
    return torch.complex(out[0], out[1]) if volume.is_complex() else out[0]


def project_real_space(volume: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Projections ``P(x, y) = Σ_z V(Rᵀ r)``, whose 2D DFT is the central slice at ``Rᵀ k``.

    Parameters
    ----------
    volume
        ``(L, L, L)`` map ``[z, y, x]``.
    rotation
        ``(B, 3, 3)``.

    Returns
    -------
    ``(B, L, L)`` projections (sum over voxels, trilinear sampling).
    """
    L = volume.shape[-1]
    r = _pixel_coords_3d(L, volume.device).reshape(-1, 3)
    out = []
    for R in rotation.to(torch.float32):
        pts = r @ R  # row form of Rᵀ r
        out.append(sample_volume(volume, pts.reshape(L, L, L, 3)).sum(0))
    return torch.stack(out)


def backproject(
    images: torch.Tensor,
    rotation: torch.Tensor,
    ctf: torch.Tensor | None = None,
    wiener: float = 1e-2,
    shift_px: torch.Tensor | None = None,
) -> torch.Tensor:
    """Known-pose Fourier reconstruction (trilinear gridding with a Wiener-like filter).

    Parameters
    ----------
    images
        ``(N, L, L)`` particle images.
    rotation
        ``(N, 3, 3)`` their poses.
    ctf
        ``(N, M)`` CTF values at the half-plane frequencies of :func:`half_plane_query`, or ``None``.
    wiener
        Added to the accumulated weight, relative to its mean over the filled voxels.
    shift_px
        ``(N, 2)`` translations of the images in pixels, undone before gridding.

    Returns
    -------
    ``(L, L, L)`` real map ``[z, y, x]``.
    """
    from cryoforge.ops.shift import phase_shift

    N, L = images.shape[0], images.shape[-1]
    idx, k2 = half_plane_query(L, images.device)
    num = torch.zeros(L**3, dtype=torch.complex128, device=images.device)
    den = torch.zeros(L**3, dtype=torch.float64, device=images.device)
    for start in range(0, N, 256):
        sl = slice(start, start + 256)
        spec = rfft2_images(images[sl].double()).reshape(-1, L * (L // 2 + 1))[:, idx]
        if shift_px is not None:
            spec = spec * phase_shift(k2.double(), -shift_px[sl].double())
        w = torch.ones_like(spec.real) if ctf is None else ctf[sl].double()
        vals, wts = spec * w, w * w
        k3 = central_slice_coords(rotation[sl].double(), k2.double())
        for sign, v in ((1.0, vals), (-1.0, vals.conj())):
            _splat(num, den, sign * k3 * L + L // 2, v, wts, L)
    filled = den > 0
    reg = wiener * den[filled].mean()
    spec3 = torch.where(filled, num / (den + reg), torch.zeros_like(num)).reshape(L, L, L)
    return fourier_to_volume(spec3).float()


def _splat(
    num: torch.Tensor, den: torch.Tensor, pos: torch.Tensor, vals: torch.Tensor, wts: torch.Tensor, L: int
) -> None:
    pos = pos.reshape(-1, 3)
    vals, wts = vals.reshape(-1), wts.reshape(-1)
    base = torch.floor(pos)
    frac = pos - base
    base = base.long()
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                ix, iy, iz = base[:, 0] + dx, base[:, 1] + dy, base[:, 2] + dz
                wx = frac[:, 0] if dx else 1 - frac[:, 0]
                wy = frac[:, 1] if dy else 1 - frac[:, 1]
                wz = frac[:, 2] if dz else 1 - frac[:, 2]
                wt = wx * wy * wz
                ok = (ix >= 0) & (ix < L) & (iy >= 0) & (iy < L) & (iz >= 0) & (iz < L)
                flat = (iz * L + iy) * L + ix
                num.index_add_(0, flat[ok], (vals * wt)[ok])
                den.index_add_(0, flat[ok], (wts * wt)[ok])
