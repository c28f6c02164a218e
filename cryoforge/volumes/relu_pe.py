"""ReLU MLP with a positional (Fourier-feature) encoding, as in cryoDRGN."""

from __future__ import annotations

import math

import torch
from pydantic import Field

from cryoforge.options import Options
from cryoforge.roles import Volume
from cryoforge.types import BuildContext
from cryoforge.volumes.layers import hermitian_query, relu_mlp


def positional_encoding(x: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """``(N, 3)`` in [-1, 1] → ``(N, 3 + 6 n_freqs)``: x, sin(π 2ʲ x), cos(π 2ʲ x), j < n_freqs."""
    freqs = math.pi * 2.0 ** torch.arange(n_freqs, device=x.device, dtype=x.dtype)
    ang = (x[..., None] * freqs).flatten(-2)
    return torch.cat([x, torch.sin(ang), torch.cos(ang)], -1)


class ReluPEVolume(Volume):
    """A ReLU MLP on a positional encoding of the 3D frequency (geometric octaves), as in cryoDRGN.

    ``n_freqs`` octaves of sin/cos features of the coordinates (scaled to [-1, 1] at Nyquist),
    then ``hidden_layers`` ReLU layers of width ``hidden_dim`` to (real, imaginary).
    Hermitian by construction; ≈270k parameters at the defaults.
    """

    name = "relu-pe"

    class Options(Options):
        hidden_dim: int = Field(256, ge=4, le=65536, description="width of the hidden layers")
        hidden_layers: int = Field(4, ge=0, le=64, description="hidden ReLU layers")
        n_freqs: int = Field(
            5, ge=1, le=32, description="octaves of sin/cos features in the positional encoding"
        )

    def __init__(self, options: Options, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        self.mlp = relu_mlp(3 + 6 * options.n_freqs, 2, options.hidden_dim, options.hidden_layers)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return hermitian_query(lambda k: self.mlp(positional_encoding(2 * k, self.options.n_freqs)), coords)
