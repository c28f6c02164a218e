"""Multiresolution hash encoding (Instant-NGP, Müller et al. 2022) with a small MLP."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from cryoforge.options import Options
from cryoforge.roles import Volume
from cryoforge.types import BuildContext
from cryoforge.volumes.layers import hermitian_query, relu_mlp

PRIMES = (1, 2654435761, 805459861)


def tcnn_available() -> bool:
    """Whether the tiny-cuda-nn backend can be used (it imports and a GPU is present)."""
    try:
        import tinycudann  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


class HashEncoding(nn.Module):
    """Pure-PyTorch multiresolution hash encoding of points in [0, 1]³.

    Level ``l`` has resolution ``floor(base · s^l)``; its table has ``2^log2_table_size`` entries of
    ``features`` values, indexed densely when the level's grid fits, else by the spatial hash
    ``xor(x·π1, y·π2, z·π3) mod T``; corners are blended trilinearly.
    """

    def __init__(
        self, n_levels: int, features: int, log2_table_size: int, base_resolution: int, per_level_scale: float
    ) -> None:
        super().__init__()
        self.n_levels, self.features = n_levels, features
        self.table_size = 2**log2_table_size
        self.resolutions = [math.floor(base_resolution * per_level_scale**lvl) for lvl in range(n_levels)]
        g = torch.Generator().manual_seed(0)
        self.tables = nn.Parameter(
            (torch.rand(n_levels, self.table_size, features, generator=g) * 2 - 1) * 1e-4
        )
        self.out_dim = n_levels * features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        offsets = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], device=x.device)
        for lvl, res in enumerate(self.resolutions):
            pos = x * res
            base = torch.floor(pos).long()
            frac = pos - base
            corners = base[:, None, :] + offsets[None]  # (N, 8, 3)
            if (res + 1) ** 3 <= self.table_size:
                idx = (corners[..., 0] * (res + 1) + corners[..., 1]) * (res + 1) + corners[..., 2]
            else:
                idx = (
                    (corners[..., 0] * PRIMES[0])
                    ^ (corners[..., 1] * PRIMES[1])
                    ^ (corners[..., 2] * PRIMES[2])
                )
            idx = idx % self.table_size
            w = torch.where(offsets[None].bool(), frac[:, None, :], 1 - frac[:, None, :]).prod(-1)  # (N, 8)
            feats = self.tables[lvl][idx]  # (N, 8, F)
            out.append((feats * w[..., None]).sum(1))
        return torch.cat(out, -1)


class HashGridVolume(Volume):
    """Instant-NGP hash grid on 3D frequency + a small ReLU MLP to (real, imaginary).

    ``backend="auto"`` uses tiny-cuda-nn's fused encoding when it imports on a GPU (same options),
    else the pure-PyTorch encoding that runs everywhere. Hermitian by construction. ≈270k
    parameters at the defaults (16 levels × 2¹³ entries × 2 features, 64-wide MLP).
    """

    name = "hashgrid"
    recommended_lr = 1e-2

    class Options(Options):
        n_levels: int = Field(16, ge=1, le=64, description="grid levels from base to finest resolution")
        features_per_level: int = Field(2, ge=1, le=64, description="features stored per hash-table entry")
        log2_table_size: int = Field(
            13, ge=4, le=24, description="log2 of the entries per level's hash table"
        )
        base_resolution: int = Field(
            4, ge=2, le=4096, description="grid points per axis of the coarsest level"
        )
        finest_resolution: int | None = Field(None, ge=2, le=65536, description="default: 2·L")
        mlp_hidden: int = Field(64, ge=4, le=65536, description="width of the MLP's hidden layers")
        mlp_layers: int = Field(1, ge=0, le=64, description="hidden layers of the MLP")
        backend: Literal["auto", "torch", "tcnn"] = Field(
            "auto",
            description="'tcnn': tiny-cuda-nn's encoding; 'torch': pure PyTorch; 'auto': tcnn if it loads",
        )

    def __init__(self, options: Options, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        o = options
        finest = o.finest_resolution or 2 * ctx.image_size
        scale = math.exp(math.log(finest / o.base_resolution) / max(o.n_levels - 1, 1))
        use_tcnn = o.backend == "tcnn" or (o.backend == "auto" and tcnn_available())
        if use_tcnn:
            import tinycudann as tcnn

            self.encoding = tcnn.Encoding(
                3,
                {
                    "otype": "HashGrid",
                    "n_levels": o.n_levels,
                    "n_features_per_level": o.features_per_level,
                    "log2_hashmap_size": o.log2_table_size,
                    "base_resolution": o.base_resolution,
                    "per_level_scale": scale,
                },
            )
            enc_dim = o.n_levels * o.features_per_level
        else:
            self.encoding = HashEncoding(
                o.n_levels, o.features_per_level, o.log2_table_size, o.base_resolution, scale
            )
            enc_dim = self.encoding.out_dim
        self.backend = "tcnn" if use_tcnn else "torch"
        self.mlp = relu_mlp(enc_dim, 2, o.mlp_hidden, o.mlp_layers)

    def _field(self, k: torch.Tensor) -> torch.Tensor:
        x = (k + 0.5).clamp(0, 1)  # [-0.5, 0.5] cycles/px → [0, 1]
        return self.mlp(self.encoding(x).float())

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return hermitian_query(self._field, coords)
