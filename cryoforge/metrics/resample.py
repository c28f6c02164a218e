"""Resampling a map: mirror, rotate (trilinear), sub-pixel shift (Fourier phase ramp), Fourier crop."""

from __future__ import annotations

import math

import torch

from cryoforge.ops.projection import sample_volume


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


def rfft_freqs(L: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


def lowpass_resize(volume: torch.Tensor, size: int, sigma_per_px: float | None = None) -> torch.Tensor:
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
