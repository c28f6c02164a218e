"""An example cryoforge plugin: the ``gaussians`` volume representation."""

from __future__ import annotations

import math

import torch
from pydantic import Field

import cryoforge


class GaussianVolume(cryoforge.Volume):
    """A sum of ``n_gaussians`` learnable isotropic 3D Gaussians (real space), in Fourier space.

    A Gaussian of amplitude ``a``, width ``σ`` (px) and centre ``c`` (px) has the transform
    ``a · exp(-2π² σ² |k|²) · exp(-2πi k·c)``: Hermitian for any parameters, since the real-space
    map is real.
    """

    name = "gaussians"

    class Options(cryoforge.Options):
        n_gaussians: int = Field(64, ge=1, description="number of Gaussians")
        sigma_px: float = Field(2.0, gt=0, description="initial width in pixels")

    def __init__(self, options: Options, ctx: cryoforge.BuildContext) -> None:
        super().__init__(options, ctx)
        L = ctx.image_size
        g = torch.Generator().manual_seed(0)
        self.centers_px = torch.nn.Parameter((torch.rand(options.n_gaussians, 3, generator=g) - 0.5) * L / 3)
        self.log_sigma = torch.nn.Parameter(torch.full((options.n_gaussians,), math.log(options.sigma_px)))
        self.amplitude = torch.nn.Parameter(torch.full((options.n_gaussians,), 1.0 / options.n_gaussians))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        L = self.ctx.image_size
        k2 = (coords**2).sum(-1, keepdim=True)
        sigma2 = torch.exp(2 * self.log_sigma)
        envelope = self.amplitude * torch.exp(-2 * math.pi**2 * sigma2 * k2)
        phase = -2 * math.pi * (coords @ self.centers_px.T)
        # the 3D DFT / L of a unit-volume Gaussian is ≈ L² · its continuous transform / L³ · L³ / L
        value = (envelope * torch.polar(torch.ones_like(phase), phase)).sum(-1) * L**2
        return value.to(torch.complex64)


@cryoforge.hookimpl
def cryoforge_register_volumes() -> list[type]:
    return [GaussianVolume]
