"""A plain SIREN on frequency coordinates."""

from __future__ import annotations

import torch
from pydantic import Field

from cryoforge.options import Options
from cryoforge.roles import Volume
from cryoforge.types import BuildContext
from cryoforge.volumes.layers import Siren, hermitian_query


class SirenVolume(Volume):
    """A sine-activated MLP (SIREN) from 3D frequency to (real, imaginary); no exp envelope.

    The cryoAI ablation's "SIREN" baseline: ``hidden_layers`` sine layers of width ``hidden_dim``
    with first-layer frequency ``omega_0``; coordinates scaled to [-1, 1] at Nyquist.
    Hermitian by construction; ≈330k parameters at the defaults.
    """

    name = "siren"
    recommended_lr = 1e-4

    class Options(Options):
        hidden_dim: int = Field(256, ge=4, le=65536, description="width of the hidden layers")
        hidden_layers: int = Field(5, ge=0, le=64, description="hidden sine layers")
        omega_0: float = Field(30.0, gt=0, description="SIREN frequency ω0 of the sine activations")

    def __init__(self, options: Options, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        self.net = Siren(3, 2, options.hidden_dim, options.hidden_layers, options.omega_0)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return hermitian_query(lambda k: self.net(2 * k), coords)
