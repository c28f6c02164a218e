"""A trained volume, frozen: its Fourier values sampled once on a fine grid, read by interpolation.

Rendering a slice of a neural volume evaluates the network at every queried frequency (about
0.39·L² per image): at L=64 on a CPU that is ~3.4 ms an image for FourierNet, four times the
encoder. When the volume no longer changes (``cryoforge infer``), the same slices can be read from
its samples on a grid ``oversample`` times finer than the images' frequency spacing, by trilinear
interpolation, for a small fraction of the cost.

Trilinear interpolation in Fourier space multiplies the real-space map by the interpolation
kernel's transform, ``sinc²(r / (s·L))`` along each axis (``r`` in pixels, ``s`` the
oversampling), and folds in copies of the map ``s·L`` pixels away. The samples are therefore
corrected first (gridding correction, as RELION's projector does): the fine grid is taken to real
space, divided by that ``sinc²``, and taken back. What remains is the copies' leak through the
kernel's side lobes, small for a particle near the box centre.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cryoforge.ops.grids import centered_freqs
from cryoforge.ops.projection import sample_complex_channels

MAX_SAMPLED_BOX = 128
"""The largest box whose volume the engine samples by default: a ``(2L)³`` complex grid (134 MB at
128 px, plus the FFT's temporaries); larger boxes render from the network."""


class SampledVolume(nn.Module):
    """Trilinear interpolation of ``volume``'s gridding-corrected Fourier values on a cubic grid.

    Parameters
    ----------
    volume
        Any volume (``(..., 3)`` frequencies in cycles/pixel → ``(...)`` complex values).
    image_size
        ``L``: the images' box (frequency spacing ``1/L`` cycles/pixel).
    oversample
        Grid points per image frequency step: the grid's spacing is ``1/(oversample·L)``
        cycles/pixel. Memory ``8·(oversample·L + 1)³`` bytes (17 MB at L=64, 2×).
    chunk
        Frequencies evaluated per call of ``volume`` while sampling.

    Only the ball that slices reach (``|k| < ½`` plus one grid cell) is evaluated.
    """

    def __init__(self, volume: nn.Module, image_size: int, oversample: int = 2, chunk: int = 65536) -> None:
        super().__init__()
        if oversample < 1:
            raise ValueError(f"oversample must be at least 1 (got {oversample})")
        n = oversample * image_size
        device = next(volume.parameters(), torch.empty(0)).device
        k = centered_freqs(n, device)  # (j - n/2)/n cycles/pixel: -½ … ½ - 1/n
        kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
        coords = torch.stack([kx, ky, kz], dim=-1).reshape(-1, 3)
        inside = coords.pow(2).sum(-1) <= (0.5 + math.sqrt(3) / n) ** 2
        values = torch.zeros(n**3, dtype=torch.complex64, device=device)
        pts = coords[inside]
        with torch.no_grad():
            out = [volume(pts[i : i + chunk]).to(torch.complex64) for i in range(0, len(pts), chunk)]
        if out:
            values[inside] = torch.cat(out)
        grid = _gridding_corrected(values.reshape(n, n, n))
        # one more plane on each axis (the DFT grid is periodic): the nodes span [-½, ½] inclusive
        grid = torch.cat([grid, grid[:1]], 0)
        grid = torch.cat([grid, grid[:, :1]], 1)
        grid = torch.cat([grid, grid[:, :, :1]], 2)
        self.register_buffer("grid", torch.stack([grid.real, grid.imag])[None].float(), persistent=False)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """``(..., 3)`` frequencies ``(kx, ky, kz)`` in cycles/pixel → ``(...)`` complex64 values."""
        return sample_complex_channels(self.grid, 2.0 * coords)  # [-½, ½] → grid_sample's [-1, 1]


def _gridding_corrected(values: torch.Tensor) -> torch.Tensor:
    """``(n, n, n)`` centred Fourier samples (``[kz, ky, kx]``, spacing ``1/n``) divided, in real space,
    by the trilinear kernel's transform ``sinc²(r/n)`` per axis (``r`` in fine-grid pixels)."""
    n = values.shape[0]
    real = torch.fft.ifftn(torch.fft.ifftshift(values))
    r = torch.fft.fftfreq(n, device=values.device, dtype=torch.float64) * n  # pixel offsets, FFT order
    w = torch.sinc(r / n) ** 2
    kernel = (w[:, None, None] * w[None, :, None] * w[None, None, :]).to(real.real.dtype)
    return torch.fft.fftshift(torch.fft.fftn(real / kernel)).to(torch.complex64)
