"""FourierNet (cryoAI): a SIREN modulant times the exponential of a SIREN envelope."""

from __future__ import annotations

import torch
from pydantic import Field

from cryoforge.options import Options
from cryoforge.roles import Volume
from cryoforge.types import BuildContext
from cryoforge.volumes.layers import Siren, hermitian_query


class FourierNet(Volume):
    """cryoAI's FourierNet: ``V(k) = exp(envelope(k)) ⊙ modulant(k)`` on 3D frequencies.

    Two SIRENs on the frequency coordinates (scaled to [-1, 1] at Nyquist): the modulant
    (``modulant_layers`` hidden layers, ω0 = 40) and the envelope (``envelope_layers``, ω0 = 30).
    The exponential lets the envelope span the orders of magnitude between low and high
    frequencies. Their elementwise product gives (real, imaginary). Hermitian by construction.
    About 330k parameters at the defaults.
    """

    name = "fouriernet"

    class Options(Options):
        hidden_dim: int = Field(256, ge=4, le=65536, description="width of both SIRENs' hidden layers")
        modulant_layers: int = Field(3, ge=0, le=64, description="hidden layers of the modulant SIREN")
        envelope_layers: int = Field(2, ge=0, le=64, description="hidden layers of the envelope SIREN")
        omega_0_modulant: float = Field(40.0, gt=0, description="SIREN frequency ω0 of the modulant")
        omega_0_envelope: float = Field(30.0, gt=0, description="SIREN frequency ω0 of the envelope")

    def __init__(self, options: Options, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        o = options
        self.modulant = Siren(3, 2, o.hidden_dim, o.modulant_layers, o.omega_0_modulant)
        self.envelope = Siren(3, 2, o.hidden_dim, o.envelope_layers, o.omega_0_envelope)

    def _field(self, k: torch.Tensor) -> torch.Tensor:
        x = 2 * k
        return torch.exp(self.envelope(x)) * self.modulant(x)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return hermitian_query(self._field, coords)
