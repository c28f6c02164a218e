"""Fourier filters of images."""

from __future__ import annotations

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
