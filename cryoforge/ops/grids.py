"""Frequency grids in cycles/pixel."""

from __future__ import annotations

import torch


def centered_freqs(L: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(L,)`` frequencies ``(i - L//2) / L`` in cycles/pixel, in centred (fftshifted) order."""
    return (torch.arange(L, device=device, dtype=torch.float64) - L // 2).float() / L


def rfft_grid_2d(L: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(L, L//2 + 1, 2)`` frequencies ``(kx, ky)`` in cycles/pixel in ``torch.fft.rfft2`` layout.

    Rows follow ``fftfreq(L)`` (ky), columns ``rfftfreq(L)`` (kx >= 0).
    """
    ky = torch.fft.fftfreq(L, device=device)
    kx = torch.fft.rfftfreq(L, device=device)
    gy, gx = torch.meshgrid(ky, kx, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def centered_grid_2d(L: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(L, L, 2)`` frequencies ``(kx, ky)`` of a centred 2D FFT, in cycles/pixel."""
    f = centered_freqs(L, device)
    gy, gx = torch.meshgrid(f, f, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def centered_grid_3d(L: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(L, L, L, 3)`` frequencies ``(kx, ky, kz)`` of a centred 3D FFT indexed ``[z, y, x]``."""
    f = centered_freqs(L, device)
    gz, gy, gx = torch.meshgrid(f, f, f, indexing="ij")
    return torch.stack([gx, gy, gz], dim=-1)


def nyquist_mask(freqs: torch.Tensor, radius: float = 0.5) -> torch.Tensor:
    """Boolean mask of frequencies strictly inside the circle/sphere of ``radius`` cycles/pixel.

    Parameters
    ----------
    freqs
        ``(..., D)`` frequencies in cycles/pixel.
    """
    return freqs.pow(2).sum(-1) < radius**2


def half_plane_query(L: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The rfft2 half-plane frequencies inside the Nyquist circle.

    Returns
    -------
    flat_index
        ``(M,)`` positions in the flattened ``(L, L//2 + 1)`` rfft2 array.
    freqs
        ``(M, 2)`` their ``(kx, ky)`` in cycles/pixel. ``M ≈ 0.39 L²``.
    """
    grid = rfft_grid_2d(L, device).reshape(-1, 2)
    flat_index = torch.nonzero(nyquist_mask(grid)).squeeze(1)
    return flat_index, grid[flat_index]
