"""The frozen volume of ``cryoforge infer``: trilinear reads of gridding-corrected samples, checked
against the analytic Fourier transform of a Gaussian blob; and the progress lines of a pass."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from cryoforge.io.console_progress import ParticleProgress
from cryoforge.volumes.sampled import SampledVolume


class GaussianBlob(nn.Module):
    """The Fourier transform of a unit Gaussian of ``sigma_px`` centred at ``centre_px`` (x, y, z):
    ``exp(-2π² σ² |k|²) · exp(-2πi k·c)``, ``k`` in cycles/pixel."""

    def __init__(self, sigma_px: float, centre_px: tuple[float, float, float]) -> None:
        super().__init__()
        self.sigma = sigma_px
        self.register_buffer("centre", torch.tensor(centre_px, dtype=torch.float64))
        self.dummy = nn.Parameter(torch.zeros(1))  # a device to sample on

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        k = k.double()
        envelope = torch.exp(-2 * math.pi**2 * self.sigma**2 * k.pow(2).sum(-1))
        return (envelope * torch.exp(-2j * math.pi * (k @ self.centre))).to(torch.complex64)


def _relative_error(volume: nn.Module, oversample: int, L: int = 32) -> float:
    gen = torch.Generator().manual_seed(0)
    k = torch.rand(20_000, 3, generator=gen) - 0.5
    k = k[k.norm(dim=1) < 0.5]  # what central slices query
    exact = volume(k)
    read = SampledVolume(volume, L, oversample)(k)
    return float((read - exact).abs().norm() / exact.abs().norm())


@pytest.mark.parametrize(
    ("sigma", "centre", "limit"),
    [(1.5, (0.0, 0.0, 0.0), 3e-3), (1.5, (2.5, -1.5, 1.0), 1e-2)],
)
def test_sampled_volume_reads_the_analytic_transform(sigma, centre, limit):
    """A compact particle's slices are read within 1 % at 2× oversampling; a finer grid is closer."""
    blob = GaussianBlob(sigma, centre)
    err2 = _relative_error(blob, 2)
    assert err2 < limit, err2
    assert _relative_error(blob, 3) < err2 < _relative_error(blob, 1)


def test_sampled_volume_keeps_shapes_and_hermitian_symmetry():
    blob = GaussianBlob(1.5, (3.0, 0.0, -2.0))
    sampled = SampledVolume(blob, 16)
    k = torch.rand(4, 7, 3, generator=torch.Generator().manual_seed(1)) - 0.5
    out = sampled(k)
    assert out.shape == (4, 7) and out.dtype == torch.complex64
    assert torch.allclose(sampled(-k), out.conj(), atol=1e-5)  # a real map's transform


def test_sampled_volume_refuses_no_oversampling():
    with pytest.raises(ValueError, match="oversample"):
        SampledVolume(GaussianBlob(1.0, (0.0, 0.0, 0.0)), 8, oversample=0)


def test_particle_progress_plain_lines():
    """Off a terminal: a flushed line with particles done, percentage, rate and time left."""
    stream = io.StringIO()
    bar = ParticleProgress("infer", 1000, stream=stream, every_s=0.0)
    bar.update(250)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "infer: particles 250/1,000 (25.0 %)" in lines[0] and "left ~" in lines[0]
    assert "particles 250/1,000" in lines[-1]
    quiet = io.StringIO()
    bar = ParticleProgress("infer", 10, stream=quiet, every_s=3600.0)
    bar.update(5)  # within the interval: no line
    assert quiet.getvalue() == ""
