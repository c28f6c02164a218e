"""Volume representations beyond the contract: analytic checks and backend agreement."""

from __future__ import annotations

import math

import pytest
import torch

from cryoforge.types import BuildContext
from cryoforge.volumes.hashgrid import HashEncoding, HashGridVolume, tcnn_available
from cryoforge.volumes.relu_pe import positional_encoding
from cryoforge.volumes.voxel import VoxelVolume


def test_voxel_interpolates_its_grid_exactly_at_voxel_centres():
    v = VoxelVolume(VoxelVolume.Options(), BuildContext(8, 1.0))
    with torch.no_grad():
        v.grid.normal_()
    # voxel (z, y, x) = (4, 5, 6) in the canonical half (kx > 0): k = (6 - 4, 5 - 4, 4 - 4) / 8
    k = torch.tensor([[2 / 8, 1 / 8, 0.0]])
    out = v(k)
    assert torch.allclose(out.real, v.grid[0, 0, 4, 5, 6]) and torch.allclose(out.imag, v.grid[0, 1, 4, 5, 6])
    assert torch.allclose(v(-k), out.conj())


def test_positional_encoding_octaves():
    x = torch.tensor([[0.25, -0.5, 1.0]])
    pe = positional_encoding(x, 3)
    assert pe.shape == (1, 3 + 18)
    octaves = math.pi * torch.tensor([1.0, 2.0, 4.0])
    assert torch.allclose(pe[0, 3:6], torch.sin(octaves * 0.25), atol=1e-6)  # x's octaves, sin
    assert torch.allclose(pe[0, 12:15], torch.cos(octaves * 0.25), atol=1e-6)  # x's octaves, cos


def test_hash_encoding_is_continuous_and_trilinear():
    enc = HashEncoding(n_levels=2, features=2, log2_table_size=10, base_resolution=4, per_level_scale=2.0)
    with torch.no_grad():
        enc.tables.normal_()
    x = torch.rand(64, 3)
    eps = 1e-4
    d = (enc(x + eps) - enc(x)).abs().max()
    assert d < 1e-2  # continuous
    # at a dense-grid vertex the encoding equals that vertex's table entry (level 0: 5³ ≤ 1024)
    vtx = torch.tensor([[1 / 4, 2 / 4, 3 / 4]])
    idx = (1 * 5 + 2) * 5 + 3
    assert torch.allclose(enc(vtx)[0, :2], enc.tables[0, idx], atol=1e-6)


def test_hashgrid_uses_torch_backend_without_tinycudann():
    v = HashGridVolume(HashGridVolume.Options(), BuildContext(16, 1.0))
    assert v.backend == ("tcnn" if tcnn_available() else "torch")


@pytest.mark.gpu
@pytest.mark.skipif(not tcnn_available(), reason="needs tinycudann and a CUDA GPU")
def test_hashgrid_backends_agree():  # pragma: no cover - GPU only
    torch.manual_seed(0)
    ctx = BuildContext(32, 1.0)
    a = HashGridVolume(HashGridVolume.Options(backend="torch"), ctx).cuda()
    b = HashGridVolume(HashGridVolume.Options(backend="tcnn"), ctx).cuda()
    b.mlp.load_state_dict(a.mlp.state_dict())
    # tiny-cuda-nn stores level tables contiguously; coarse levels use only (res+1)³ entries
    params = []
    for lvl, res in enumerate(a.encoding.resolutions):
        n = min(a.encoding.table_size, -(-((res + 1) ** 3) // 8) * 8)
        params.append(a.encoding.tables[lvl, :n].reshape(-1))
    with torch.no_grad():
        b.encoding.params.copy_(torch.cat(params).to(b.encoding.params.dtype))
    k = (torch.rand(4096, 3, device="cuda") - 0.5) * 0.9
    assert torch.allclose(a(k), b(k).to(a(k).dtype), rtol=1e-2, atol=1e-3)
