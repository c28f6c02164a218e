"""Translations as Fourier phase shifts."""

from __future__ import annotations

import math

import torch


def phase_shift(freqs_2d: torch.Tensor, shift_px: torch.Tensor) -> torch.Tensor:
    """``exp(-2πi k·t)``: multiplying a centred spectrum by it translates the image by ``t``.

    Parameters
    ----------
    freqs_2d
        ``(N, 2)`` frequencies ``(kx, ky)`` in cycles/pixel.
    shift_px
        ``(B, 2)`` translations ``(x, y)`` in pixels.

    Returns
    -------
    ``(B, N)`` complex phase factors.
    """
    phase = -2 * math.pi * (shift_px.to(freqs_2d.dtype) @ freqs_2d.T)
    return torch.polar(torch.ones_like(phase), phase)


def origin_phase(freqs_2d: torch.Tensor, origin_px: torch.Tensor) -> torch.Tensor:
    """``exp(+2πi k·o)``: places a centred projection where a particle with origin ``o`` sits.

    RELION's meaning of ``rlnOriginX/Y[Angst]`` (and cryoSPARC's ``alignments3D/shift``,
    cryoDRGN's ``trans``): the particle sits in its box at ``−o``, so the observed image is the
    centred projection translated by ``−o``. Proven on RELION's own projections
    (``relion_project``, see ``docs/conventions.md``). Multiply by the conjugate to centre an
    observed image.

    Parameters
    ----------
    freqs_2d
        ``(N, 2)`` frequencies ``(kx, ky)`` in cycles/pixel.
    origin_px
        ``(B, 2)`` origins ``(x, y)`` in pixels, the file's sign.

    Returns
    -------
    ``(B, N)`` complex phase factors.
    """
    return phase_shift(freqs_2d, -origin_px)


def translate_images(images: torch.Tensor, shift_px: torch.Tensor) -> torch.Tensor:
    """Translate ``(B, L, L)`` images by ``(B, 2)`` pixel shifts ``(x, y)`` (periodic, sub-pixel)."""
    from cryoforge.ops.fft import irfft2_images, rfft2_images
    from cryoforge.ops.grids import rfft_grid_2d

    L = images.shape[-1]
    grid = rfft_grid_2d(L, images.device).reshape(-1, 2).to(images.dtype)
    spec = rfft2_images(images).reshape(images.shape[0], -1)
    out = spec * phase_shift(grid, shift_px)
    return irfft2_images(out.reshape(images.shape[0], L, L // 2 + 1), L)
