"""Masked half-map FSC with phase-randomisation correction (Chen et al. 2013), against analytic
expectations: the FSC of signal plus independent white noise, the correlation a sharp mask makes of
two maps that share only low frequencies, and the geometry of the automatic mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoforge.metrics.fsc import fsc, half_bit_curve, shell_voxel_counts
from cryoforge.metrics.masked_fsc import (
    auto_mask,
    corrected_masked_fsc,
    lowpass_map,
    randomize_phases_beyond,
    soft_mask_px,
)
from cryoforge.ops.filters import fourier_shells

L = 48


def _blobs(seed: int = 0) -> torch.Tensor:
    """A molecule-like map: 50 Gaussian atoms of σ 1.2 px within 8 px of the centre."""
    g = torch.Generator().manual_seed(seed)
    z = torch.arange(L, dtype=torch.float64) - L // 2
    Z, Y, X = torch.meshgrid(z, z, z, indexing="ij")
    out = torch.zeros(L, L, L, dtype=torch.float64)
    for c in torch.randint(-8, 9, (50, 3), generator=g):
        out += torch.exp(-((Z - c[0]) ** 2 + (Y - c[1]) ** 2 + (X - c[2]) ** 2) / (2 * 1.2**2))
    return out


def _expected_fsc(signal: torch.Tensor, mask: torch.Tensor, sigma: float) -> np.ndarray:
    """FSC of ``mask·(signal + n₁)`` and ``mask·(signal + n₂)``, n white with std ``sigma``:
    ``P_S / (P_S + P_N)`` per shell, ``P_N = count · σ² Σ m²`` (Parseval)."""
    S = torch.fft.fftn(signal * mask).flatten()
    shell = fourier_shells(L).flatten()
    n = L // 2 + 1
    keep = shell < n
    ps = torch.zeros(n, dtype=torch.float64).index_add_(0, shell[keep], S[keep].abs() ** 2).numpy()
    pn = shell_voxel_counts(L) * sigma**2 * float((mask**2).sum())
    return ps / (ps + pn)


def test_corrected_fsc_matches_the_analytic_fsc_of_signal_plus_noise():
    """With the automatic mask, the corrected masked FSC follows ``P_S/(P_S+P_N)`` of the masked
    maps, and is far above the unmasked FSC (the solvent's noise is gone)."""
    sig = _blobs()
    sigma = 0.4
    g = torch.Generator().manual_seed(1)
    h1 = sig + sigma * torch.randn(L, L, L, generator=g, dtype=torch.float64)
    h2 = sig + sigma * torch.randn(L, L, L, generator=g, dtype=torch.float64)
    mask = auto_mask((h1 + h2) / 2, pixel_size_angstrom=3.0).double()
    res = corrected_masked_fsc(h1, h2, mask, 3.0)
    expected = _expected_fsc(sig, mask, sigma)
    band = slice(3, L // 2)
    assert np.mean(np.abs(res.corrected.values[band] - expected[band])) < 0.05
    assert res.randomize_from_shell is not None and res.randomize_from_shell <= 4
    # the unmasked curve follows the unmasked expectation, and crosses 0.143 much earlier
    unmasked_expected = _expected_fsc(sig, torch.ones_like(mask), sigma)
    assert np.mean(np.abs(res.unmasked.values[band] - unmasked_expected[band])) < 0.05
    assert res.corrected.crossing(0.143).freq_per_px > res.unmasked.crossing(0.143).freq_per_px + 0.05
    assert 0.02 < res.mask_fraction < 0.3


def test_correction_removes_what_a_sharp_mask_correlates():
    """Two maps that share only shells ≤ 4 (independent noise beyond) have no common structure
    beyond shell 4; a hard-edged mask makes their masked FSC high there, the corrected FSC is ~0."""
    g = torch.Generator().manual_seed(2)
    common = lowpass_map(_blobs(3), resolution_angstrom=L / 4.0, pixel_size_angstrom=1.0)
    shell = fourier_shells(L)

    def half() -> torch.Tensor:
        noise = torch.randn(L, L, L, generator=g, dtype=torch.float64)
        high = torch.fft.ifftn(torch.fft.fftn(noise) * (shell > 6)).real
        return common * 20 + 0.02 * high

    h1, h2 = half(), half()
    hard = (common > 0.2 * common.max()).double()
    res = corrected_masked_fsc(h1, h2, hard, 1.0)
    far = slice(10, L // 2)
    assert np.mean(res.masked.values[far]) > 0.3  # the mask's own correlation
    assert abs(np.mean(res.corrected.values[far])) < 0.05
    assert np.max(np.abs(res.corrected.values[far])) < 0.2


def test_pure_noise_masked_fsc_is_noise():
    """Independent noise maps under the automatic mask of a blob: the corrected FSC stays within
    the masked half-bit curve's noise beyond the randomised shell."""
    g = torch.Generator().manual_seed(4)
    a = torch.randn(L, L, L, generator=g, dtype=torch.float64)
    b = torch.randn(L, L, L, generator=g, dtype=torch.float64)
    mask = auto_mask(_blobs(), 3.0).double()
    res = corrected_masked_fsc(a, b, mask, 3.0)
    tail = res.corrected.values[4:]
    assert np.mean(np.abs(tail)) < 0.1
    assert np.all(np.abs(tail) < res.corrected.half_bit[4:] + 0.05)


def test_phase_randomisation_keeps_amplitudes_and_low_shells():
    g = torch.Generator().manual_seed(5)
    vol = _blobs() + 0.1 * torch.randn(L, L, L, generator=g, dtype=torch.float64)
    out = randomize_phases_beyond(vol, 6, torch.Generator().manual_seed(0))
    F, G = torch.fft.fftn(vol), torch.fft.fftn(out)
    shell = fourier_shells(L)
    assert torch.allclose(F.abs(), G.abs(), rtol=1e-6, atol=1e-8)
    assert torch.allclose(F[shell < 6], G[shell < 6], atol=1e-8)
    _, values = fsc(vol, out)
    assert np.all(values[:6] > 0.999) and np.mean(np.abs(values[10:])) < 0.1


def test_soft_mask_edge_and_automatic_mask_of_a_sphere():
    """A ball of radius 8 px: the mask's distance is the brute-force distance to the nearest ball
    voxel (rounded up to its 0.5-px step), the mask is 1 out to ``near``, the raised cosine of that
    distance over the edge, 0 beyond; the automatic mask of a ball map is such a mask."""
    from cryoforge.metrics.masked_fsc import distance_to_mask_px

    r1 = torch.arange(L, dtype=torch.float64) - L // 2
    r = torch.sqrt(r1[:, None, None] ** 2 + r1[None, :, None] ** 2 + r1[None, None, :] ** 2)
    ball = r <= 8.0
    d = distance_to_mask_px(ball, 6.0)
    idx = torch.stack(torch.meshgrid(r1, r1, r1, indexing="ij"), -1)
    inside = idx[ball]
    probe = idx[(r > 8.0) & (r < 13.5)][::7]
    truth = torch.cdist(probe, inside).min(1).values
    approx = d[(r > 8.0) & (r < 13.5)][::7]
    assert torch.all(approx >= truth - 1e-9) and torch.all(approx <= truth + 0.5 + 1e-9)
    m = soft_mask_px(ball, near_px=2.0, edge_px=4.0)
    assert torch.all(m[ball] == 1.0) and torch.all(m[r >= 14.6] == 0.0)
    t = ((truth - 2.0) / 4.0).clamp(0, 1)
    ideal = 0.5 * (1 + torch.cos(torch.pi * t))
    got = m[(r > 8.0) & (r < 13.5)][::7].double()
    assert float((got - ideal).abs().max()) < 0.2  # one 0.5-px step of a 4-px cosine edge
    # the automatic mask (2 Å/px: 6 Å → 3 px dilation, edge 4 px) of a smooth ball map
    smooth = lowpass_map(ball.double(), 8.0, 2.0)
    auto = auto_mask(smooth, 2.0)
    assert float(auto[r <= 9.0].min()) == 1.0 and float(auto[r >= 17.0].max()) == 0.0


def test_half_bit_counts_the_masked_voxels():
    n = shell_voxel_counts(32)
    from cryoforge.metrics.fsc import FSCReport

    rep = FSCReport(np.arange(17) / 32, np.zeros(17), 3.0, voxel_fraction=0.1)
    assert np.allclose(rep.half_bit, half_bit_curve(n * 0.1)[:17])
    assert np.all(rep.half_bit[1:] > half_bit_curve(n)[1:17])


@pytest.mark.parametrize("spec", ["none", "auto"])
def test_resolve_mask_specs(spec):
    from cryoforge.metrics.masked_fsc import NO_MASK, resolve_mask

    avg = _blobs().float()
    mask, text = resolve_mask(spec, avg, 3.0)
    if spec == "none":
        assert mask is None and text == NO_MASK
    else:
        assert mask.shape == avg.shape and "automatic" in text and float(mask.max()) == 1.0


def test_degenerate_maps_and_curves():
    """No positive density, or a flat map: no automatic mask (the FSC stays unmasked, and says
    why). Maps that agree to Nyquist: nothing is randomised, and the text says it is uncorrected."""
    from cryoforge.metrics.masked_fsc import NO_AUTO_MASK, correction_text, resolve_mask

    assert resolve_mask("auto", -_blobs().float(), 3.0) == (None, NO_AUTO_MASK)
    assert resolve_mask("auto", torch.ones(L, L, L), 3.0) == (None, NO_AUTO_MASK)
    sig = _blobs()
    res = corrected_masked_fsc(sig, sig.clone(), auto_mask(sig, 3.0).double(), 3.0)
    assert res.randomize_from_shell is None and np.allclose(res.corrected.values, res.masked.values)
    assert "not corrected" in correction_text(res)


def test_mask_does_not_wrap_round_the_box_and_odd_boxes_work():
    """Density touching one face of the box leaves the opposite face unmasked (the dilation runs in
    a padded box); a 33-px box gives a mask and a corrected curve of its own size."""
    from cryoforge.metrics.masked_fsc import distance_to_mask_px

    binary = torch.zeros(L, L, L, dtype=torch.bool)
    binary[:2, 20:28, 20:28] = True
    d = distance_to_mask_px(binary, 6.0)
    assert torch.isinf(d[-3:]).all() and float(d[3, 24, 24]) <= 2.5
    odd = torch.randn(33, 33, 33, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    smooth = lowpass_map(odd, 12.0, 3.0)
    mask = soft_mask_px(smooth > smooth.quantile(0.9), 1.0, 2.0).double()
    res = corrected_masked_fsc(odd, odd + 0.5 * torch.randn_like(odd), mask, 3.0)
    assert res.corrected.values.shape == (17,) and mask.shape == (33, 33, 33)
