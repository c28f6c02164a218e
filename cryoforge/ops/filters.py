"""Fourier filters of images."""

from __future__ import annotations

import math

import torch

from cryoforge.ops.grids import rfft_grid_2d


def lowpass_disk(images: torch.Tensor, fraction: float) -> torch.Tensor:
    """Keep the spatial frequencies of ``(..., L, L)`` real images inside a disk.

    Parameters
    ----------
    images
        ``(..., L, L)`` real images.
    fraction
        Disk radius as a fraction of Nyquist (0.5 cycles/pixel); frequencies with
        ``|k| <= fraction · 0.5`` are kept, the rest set to zero. ``fraction >= 1`` returns
        ``images`` unchanged (the corners beyond Nyquist are kept too).

    Returns
    -------
    torch.Tensor
        ``(..., L, L)`` filtered images, differentiable with respect to ``images``.
    """
    if fraction >= 1.0:
        return images
    L = images.shape[-1]
    k = rfft_grid_2d(L, images.device)
    mask = k.pow(2).sum(-1) <= (0.5 * fraction) ** 2
    spectrum = torch.fft.rfft2(images) * mask
    return torch.fft.irfft2(spectrum, s=(L, L))


def fourier_shells(L: int) -> torch.Tensor:
    """``(L, L, L)`` shell index ``round(|k| · L)`` of every voxel of the unshifted ``L³`` FFT grid
    (``k`` in cycles/px): RELION's shells, one Fourier pixel wide."""
    f = torch.fft.fftfreq(L, dtype=torch.float64)
    kz, ky, kx = torch.meshgrid(f, f, f, indexing="ij")
    return torch.round(torch.sqrt(kx**2 + ky**2 + kz**2) * L).long()


def raised_cosine_shells(n: int, cutoff_shell: float) -> torch.Tensor:
    """``(n,)`` float64 low-pass weights of Fourier shells ``0 … n − 1``: 1 up to ``cutoff_shell``
    (Fourier px, fractional), a raised cosine ``0.5 (1 + cos(π (k − cutoff)))`` to 0 over the next
    Fourier pixel, 0 beyond; ``inf`` keeps every shell."""
    k = torch.arange(n, dtype=torch.float64)
    return 0.5 * (1 + torch.cos(math.pi * (k - cutoff_shell).clamp(0, 1)))


def shell_filter(volume: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Multiply every Fourier shell of a map by its weight.

    Parameters
    ----------
    volume
        ``(L, L, L)`` real map ``[z, y, x]``.
    weights
        ``(n,)`` weight of shells ``0 … n − 1``; shell ``round(|k| · L)`` (:func:`fourier_shells`, the
        shells of :func:`cryoforge.metrics.fsc.fsc`). Shells from ``n`` on (the cube's corners
        when ``n = L//2 + 1``) get weight 0.

    Returns
    -------
    torch.Tensor
        ``(L, L, L)`` filtered map, in ``volume``'s dtype.
    """
    shell = fourier_shells(volume.shape[-1])
    w = torch.as_tensor(weights, dtype=torch.float64)
    per_voxel = torch.where(shell < len(w), w[shell.clamp_max(len(w) - 1)], torch.zeros((), dtype=w.dtype))
    spectrum = torch.fft.fftn(volume.double()) * per_voxel
    return torch.fft.ifftn(spectrum).real.to(volume.dtype)


def soft_sphere_mask(L: int, radius_px: float, edge_px: float) -> torch.Tensor:
    """``(L, L, L)`` float32 mask about the centre voxel ``L//2``: 1 within ``radius_px``, a raised-cosine
    edge ``0.5 (1 + cos(π (r − radius) / edge))`` out to ``radius_px + edge_px``, 0 beyond (RELION's
    soft spherical mask of the particle diameter)."""
    r1 = torch.arange(L, dtype=torch.float64) - L // 2
    r = torch.sqrt(r1[:, None, None] ** 2 + r1[None, :, None] ** 2 + r1[None, None, :] ** 2)
    t = ((r - radius_px) / max(edge_px, 1e-9)).clamp(0, 1)
    return (0.5 * (1 + torch.cos(torch.pi * t))).float()
