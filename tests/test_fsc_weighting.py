"""The final map of a half-set run: the half maps' average weighted by C_ref = sqrt(2 FSC / (1 + FSC)).

The weight is checked against its theory (Rosenthal & Henderson 2003): for two half maps that are
one signal plus independent noise, the average's correlation with the true signal, shell by
shell, is ``sqrt(2 F / (1 + F))`` where ``F`` is the half maps' FSC. Measured here on Gaussian
random fields, not derived from the code under test.
"""

from __future__ import annotations

import numpy as np
import torch

from cryoforge.engine.halves import final_map
from cryoforge.metrics.fsc import find_crossing, fsc
from cryoforge.metrics.fsc_weighting import cref_weights, fsc_weighted_average, fsc_weights, lowpass_shell
from cryoforge.ops.filters import fourier_shells, shell_filter


def _field(L: int, decay: float, seed: int) -> torch.Tensor:
    """A real Gaussian random field whose amplitude falls as exp(−decay · shell)."""
    g = torch.Generator().manual_seed(seed)
    white = torch.randn(L, L, L, generator=g, dtype=torch.float64)
    w = torch.exp(-decay * torch.arange(L // 2 + 1, dtype=torch.float64))
    return shell_filter(white, w)


def _halves(L: int = 32, noise: float = 0.1, seed: int = 0):
    signal = _field(L, 0.25, seed)
    g = torch.Generator().manual_seed(seed + 1)
    h1 = signal + noise * torch.randn(L, L, L, generator=g, dtype=torch.float64)
    h2 = signal + noise * torch.randn(L, L, L, generator=g, dtype=torch.float64)
    return signal, h1, h2


def test_cref_at_known_values():
    w = cref_weights(np.array([0.2, 1.0, 1 / 3, 0.0, -0.3]))
    assert w[0] == 1.0  # the mean is kept whatever the curve says there
    np.testing.assert_allclose(w[1:], [1.0, np.sqrt(0.5), 0.0, 0.0], atol=1e-12)


def test_the_average_correlates_with_the_truth_as_cref_predicts():
    """Rosenthal & Henderson's relation, measured: FSC(average, truth) = sqrt(2F/(1+F)) per shell."""
    f_halves, f_truth = np.zeros(17), np.zeros(17)
    for seed in range(4):  # four independent draws: the sampling error of a shell falls by 2
        signal, h1, h2 = _halves(seed=10 * seed)
        f_halves += fsc(h1, h2)[1] / 4
        f_truth += fsc((h1 + h2) / 2, signal)[1] / 4
    shells = np.arange(3, 15)
    assert f_halves[shells].min() < 0.5 < f_halves[shells].max()  # the test spans the fall
    np.testing.assert_allclose(f_truth[shells], cref_weights(f_halves)[shells], atol=0.04)


def test_the_weighted_map_is_closer_to_the_truth_than_the_plain_average():
    signal, h1, h2 = _halves()
    _, f = fsc(h1, h2)
    weighted = fsc_weighted_average(h1, h2, f).double()
    plain = (h1 + h2) / 2
    err_weighted = torch.linalg.norm(weighted - signal) / torch.linalg.norm(signal)
    err_plain = torch.linalg.norm(plain - signal) / torch.linalg.norm(signal)
    assert err_weighted < 0.8 * err_plain, (float(err_weighted), float(err_plain))


def test_shells_beyond_the_resolution_are_removed():
    _, h1, h2 = _halves(noise=0.2)
    _, f = fsc(h1, h2)
    L = 32
    cutoff = find_crossing(np.arange(len(f)) / L, f, 0.143).freq_per_px * L
    assert 4 < cutoff < 14
    w = fsc_weights(f)
    assert np.all(w[int(np.floor(cutoff)) + 2 :] == 0)
    assert np.all(w[1 : int(np.floor(cutoff)) + 1] > 0.3)
    out = fsc_weighted_average(h1, h2, f)
    spectrum = torch.fft.fftn(out.double()).abs()
    beyond = fourier_shells(L) >= int(np.floor(cutoff)) + 2
    assert float(spectrum[beyond].max()) < 1e-6 * float(spectrum.max())  # float32 round-off


def test_a_curve_at_nyquist_keeps_every_shell_and_noise_keeps_the_mean():
    assert np.all(fsc_weights(np.ones(17)) == 1.0)
    noise = np.r_[1.0, np.full(16, 0.01)]
    w = fsc_weights(noise)
    assert w[0] == 1.0 and np.all(w[1:] == 0.0)


def test_a_curve_with_non_finite_shells_gives_a_finite_map():
    _, h1, h2 = _halves()
    for curve in (np.full(17, np.nan), np.r_[1.0, 0.9, np.nan, np.full(14, 0.8)]):
        w = fsc_weights(curve)
        assert np.all(np.isfinite(w)) and w[0] == 1.0
        assert torch.isfinite(fsc_weighted_average(h1, h2, curve)).all()
    assert np.all(fsc_weights(np.full(17, np.nan))[1:] == 0)  # no shell is known to agree
    assert lowpass_shell(np.full(17, np.nan)) == 0.0 and lowpass_shell(np.ones(17)) == np.inf


def test_the_final_map_of_a_symmetric_search_has_the_symmetry():
    """``final_map`` with D2 averages the weighted map over the group about the box centre, so
    it is D2 even when the half maps are not (the periodic filter and the box edge are not)."""
    _, h1, h2 = _halves(noise=0.2)
    _, f = fsc(h1, h2)
    inner = (slice(1, None),) * 3  # rolled flips wrap index 0 of a flipped axis: compare the rest
    out = final_map(h1.float(), h2.float(), f, "D2")
    about_z = torch.roll(torch.flip(out, dims=(1, 2)), shifts=(1, 1), dims=(1, 2))  # (z, −y, −x)
    about_x = torch.roll(torch.flip(out, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))  # (−z, −y, x)
    torch.testing.assert_close(about_z[inner], out[inner], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(about_x[inner], out[inner], atol=1e-5, rtol=1e-5)
    c1 = final_map(h1.float(), h2.float(), f, "C1")
    assert not torch.allclose(
        torch.roll(torch.flip(c1, dims=(1, 2)), (1, 1), (1, 2))[inner], c1[inner], atol=1e-3
    )
