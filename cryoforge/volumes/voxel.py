"""An explicit complex voxel grid in Fourier space."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from cryoforge.options import Options
from cryoforge.roles import Volume
from cryoforge.types import BuildContext
from cryoforge.volumes.layers import hermitian_query


class VoxelVolume(Volume):
    """A complex ``L³`` grid of Fourier coefficients with trilinear interpolation.

    The grid is centred (DC at voxel ``L//2``) and stores (real, imaginary) as two channels;
    queries are canonicalised to one half-space, so only that half is used and the result is
    Hermitian by construction. ``2·L³`` parameters (65k at L=32, 4.2M at L=128).
    """

    name = "voxel"
    recommended_lr = 1e-2

    class Options(Options):
        size: int | None = Field(None, ge=4, le=2048, description="grid side (default: the image size L)")
        init_std: float = Field(0.01, ge=0, description="std of the random initial values")

    def __init__(self, options: Options, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        n = options.size or ctx.image_size
        # torch's global generator: seeded by train.seed, so independent runs differ
        self.grid = torch.nn.Parameter(torch.randn(1, 2, n, n, n) * options.init_std)

    def _field(self, k: torch.Tensor) -> torch.Tensor:
        n = self.grid.shape[-1]
        pos = (k * n + n // 2) * (2.0 / (n - 1)) - 1  # voxel index → grid_sample's [-1, 1]
        out = F.grid_sample(
            self.grid,
            pos.reshape(1, 1, 1, -1, 3).to(self.grid.dtype),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=True,
        )
        return out.reshape(2, -1).T

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return hermitian_query(self._field, coords)
