"""Centred FFT helpers. The DC term sits at pixel ``L//2``; real-space origin too.

Image transforms are orthonormal (``norm="ortho"``): the transform of an image is its DFT / L.
A volume's Fourier representation is its 3D DFT / L, so that the central slice of a volume equals
the orthonormal 2D transform of its projection (Fourier slice theorem).
"""

from __future__ import annotations

import torch


def fft2_centered(images: torch.Tensor) -> torch.Tensor:
    """``(..., L, L)`` real or complex → centred orthonormal 2D DFT, same shape."""
    x = torch.fft.ifftshift(images, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))


def ifft2_centered(spectrum: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft2_centered` (complex output)."""
    x = torch.fft.ifftshift(spectrum, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.ifft2(x, norm="ortho"), dim=(-2, -1))


def rfft2_images(images: torch.Tensor) -> torch.Tensor:
    """``(..., L, L)`` real → ``(..., L, L//2 + 1)`` orthonormal half-plane DFT (rfft2 layout)."""
    return torch.fft.rfft2(torch.fft.ifftshift(images, dim=(-2, -1)), norm="ortho")


def irfft2_images(half: torch.Tensor, L: int) -> torch.Tensor:
    """Inverse of :func:`rfft2_images`: ``(..., L, L//2 + 1)`` → real ``(..., L, L)``."""
    return torch.fft.fftshift(torch.fft.irfft2(half, s=(L, L), norm="ortho"), dim=(-2, -1))


def volume_to_fourier(volume: torch.Tensor) -> torch.Tensor:
    """``(L, L, L)`` real map ``[z, y, x]`` → centred Fourier values (3D DFT / L), ``[kz, ky, kx]``."""
    L = volume.shape[-1]
    x = torch.fft.ifftshift(volume, dim=(-3, -2, -1))
    return torch.fft.fftshift(torch.fft.fftn(x, dim=(-3, -2, -1)), dim=(-3, -2, -1)) / L


def fourier_to_volume(spectrum: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`volume_to_fourier`; returns the real part ``(L, L, L)``."""
    L = spectrum.shape[-1]
    x = torch.fft.ifftshift(spectrum * L, dim=(-3, -2, -1))
    return torch.fft.fftshift(torch.fft.ifftn(x, dim=(-3, -2, -1)), dim=(-3, -2, -1)).real


def fourier_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Downsample ``(..., L, L)`` images to ``(..., size, size)`` by cropping their spectrum.

    The pixel size grows by ``L / size``; the image values keep their scale (mean preserved).
    """
    L = images.shape[-1]
    if size == L:
        return images
    if size > L:
        raise ValueError(f"cannot Fourier-crop {L} px images up to {size} px")
    spec = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(images, dim=(-2, -1))), dim=(-2, -1))
    c, h = L // 2, size // 2
    crop = spec[..., c - h : c - h + size, c - h : c - h + size]
    out = torch.fft.ifft2(torch.fft.ifftshift(crop, dim=(-2, -1))).real
    return torch.fft.fftshift(out, dim=(-2, -1)) * (size / L) ** 2
