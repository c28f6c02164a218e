"""Search options for real data: noise whitening (against the simulator's known colour) and the
per-image contrast scale (against the least-squares scale)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cryoforge.config import apply_override, load_config_file
from cryoforge.engine.run import prepare
from cryoforge.engine.whitening import background_power_per_shell, whitening_weights
from cryoforge.simulation.simulate import SimulationSettings, simulate

ROOT = Path(__file__).resolve().parents[1]


def _source(star: Path):
    c = load_config_file(ROOT / "examples" / "demo.toml")
    c = apply_override(c, "source.path", str(star))
    return prepare(c)[2]


@pytest.mark.parametrize("falloff", [None, 30.0])
def test_background_power_follows_the_simulated_noise_colour(tmp_path, falloff):
    """Noise of power 1/(1 + (s·D0)²) (D0 = 30 Å at 3 Å/px, L=32) or white, SNR 0.05: the measured
    shells follow the analytic shape within 15 % between shells 2 and 14 (masking blurs by about a
    shell), and white noise measures flat."""
    settings = SimulationSettings(n_particles=600, snr=0.05, seed=2, noise_falloff_angstrom=falloff)
    simulate(None, tmp_path, settings)
    source = _source(tmp_path / "particles.star")
    power = background_power_per_shell(source, np.arange(len(source)))
    assert power.shape == (17,)
    shells = torch.arange(2, 15, dtype=torch.float64)
    measured = power[2:15] / power[8]
    s = shells / (32 * 3.0)
    want = torch.ones_like(s) if falloff is None else 1 / (1 + (s * falloff) ** 2)
    want = want / want[6]
    assert torch.allclose(measured, want, rtol=0.15), (measured, want)
    if falloff is not None:
        assert float(power[2] / power[14]) > 10  # really coloured: the weights will matter


def test_whitening_weights_are_inverse_sigma_with_unit_mean_square():
    power = torch.tensor([4.0, 4.0, 1.0, 0.25])
    radius = torch.tensor([0.2, 1.1, 2.0, 2.6, 9.0])
    w = whitening_weights(power, radius)
    raw = torch.tensor([0.5, 0.5, 1.0, 2.0, 2.0])  # 1/σ at shells 0, 1, 2, 3 (3 again beyond the last)
    assert torch.allclose(w / w[2], raw / raw[2])
    assert float(w.pow(2).mean()) == pytest.approx(1.0)


def test_scaled_error_is_the_residual_at_each_images_best_scale():
    """An image that is 0.3 × the projection plus noise: the scaled score equals |Y − a·CP|² − |Y|²
    at the least-squares a, and prefers the right projection even though 0.3 is far from 1."""
    from cryoforge.engine.search_scoring import _error

    gen = torch.Generator().manual_seed(1)
    P = torch.randn(2, 500, generator=gen, dtype=torch.float64)  # two candidate projections (C = 1)
    Y = 0.3 * P[0] + 0.3 * torch.randn(500, generator=gen, dtype=torch.float64)
    power, cross = P.pow(2).sum(1), P @ Y
    scaled = _error(power, cross, True)
    a = cross / power
    direct = (Y[None] - a[:, None] * P).pow(2).sum(1) - Y.pow(2).sum()
    assert torch.allclose(scaled[0], direct[0])
    assert int(scaled.argmin()) == 0
    assert torch.allclose(_error(power, cross, False), power - 2 * cross)
    assert float(_error(power, -cross.abs(), True).abs().max()) == 0.0  # anti-correlated: no fit
