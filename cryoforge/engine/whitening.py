"""Noise whitening for the pose search: the data's noise power per Fourier shell, and the weights.

Real images carry coloured noise: more power at low frequencies (ice, neighbours, the carbon
edge) and less towards Nyquist (the detector, the binning). The search's score is a squared
error summed over frequencies, the log-likelihood of white noise; with coloured noise the
likelihood weights each frequency by ``1 / σ²(k)``. Multiplying the image spectra and the CTF by
``w(k) = 1 / σ(k)`` before scoring gives exactly that weighting, and leaves a backprojection's
ratio ``Σ C Y / Σ C²`` unchanged on every shell (every image has the same ``w`` at the same
``|k|``), except for the Wiener term, which then regularises the noisier shells more.

``σ²(k)`` is measured on the images themselves, outside a circular mask (RELION's background
radius, 0.375 of the box side, by default), on up to 2,000 particles spread over the set.
"""

from __future__ import annotations

import numpy as np
import torch

from cryoforge.roles import Source

BACKGROUND_RADIUS_FRACTION = 0.375
"""RELION's default background radius (``relion_preprocess --bg_radius``), as a fraction of the box."""


def background_power_per_shell(
    source: Source,
    index: np.ndarray,
    max_particles: int = 2000,
    radius_fraction: float = BACKGROUND_RADIUS_FRACTION,
) -> torch.Tensor:
    """``(L//2 + 1,)`` float64 mean noise power of the images' background per Fourier shell.

    Shell ``j`` holds the rfft2 coefficients with ``round(|k| L) = j`` (``k`` in cycles/px). Up to
    ``max_particles`` of the particles ``index`` (evenly spread) are read; each image's background
    (pixels farther than ``radius_fraction · L`` from the box centre, less its mean) is Fourier
    transformed and its power divided by the background's share of the box. Shell 0 (the
    removed mean) takes shell 1's value.
    """
    L = source.image_size
    rows = index[
        np.unique(np.linspace(0, len(index) - 1, min(len(index), max_particles)).round().astype(int))
    ]
    r = torch.arange(L, dtype=torch.float64) - L // 2
    outside = ((r[:, None] ** 2 + r[None, :] ** 2) > (radius_fraction * L) ** 2).double()
    ky = torch.fft.fftfreq(L, dtype=torch.float64)[:, None]
    kx = torch.fft.rfftfreq(L, dtype=torch.float64)[None, :]
    shells = torch.round(torch.sqrt(kx**2 + ky**2) * L).long()
    inside = shells <= L // 2
    total = torch.zeros(L // 2 + 1, dtype=torch.float64)
    for s in range(0, len(rows), 500):
        imgs = torch.from_numpy(source.read_images(rows[s : s + 500])).double() * outside
        imgs = imgs - outside * (imgs.sum((-1, -2), keepdim=True) / outside.sum())
        power = torch.fft.rfft2(imgs, norm="ortho").abs().pow(2).sum(0)
        total += torch.bincount(shells[inside], power[inside], minlength=L // 2 + 1)[: L // 2 + 1]
    counts = torch.bincount(shells[inside], minlength=L // 2 + 1)[: L // 2 + 1].double()
    radial = total / counts.clamp_min(1) / len(rows) / float(outside.mean())
    radial[0] = radial[1]
    return radial.clamp_min(float(radial.max()) * 1e-6)


def whitening_weights(power_per_shell: torch.Tensor, radius_px: torch.Tensor) -> torch.Tensor:
    """``(M,)`` float64 weights ``1/σ`` at frequencies of radius ``radius_px`` (Fourier px of the data).

    Normalised so that their square averages 1 over the frequencies given (the scores keep their
    scale). Radii beyond the last shell take its value.
    """
    j = torch.round(radius_px.double()).long().clamp(0, len(power_per_shell) - 1)
    w = power_per_shell[j].rsqrt()
    return w / w.pow(2).mean().sqrt()
