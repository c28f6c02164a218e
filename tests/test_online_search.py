"""The search's online (stochastic) phase: its map update rule, against the full-data iteration."""

from __future__ import annotations

import torch

from cryoforge.engine.search import SearchOptions, _iterate, _online_phase
from cryoforge.ops.search import so3_grid


def _opts(**kw) -> SearchOptions:
    return SearchOptions(size=12, directions=30, inplane=6, shift_extent_px=0, keep=4, **kw)


def _case(random_spectra, seed: int):
    """40 random spectra at 12 px, the 30 × 6 rotation grid, a random map, centred origins."""
    volume = torch.rand(12, 12, 12, generator=torch.Generator().manual_seed(seed + 1))
    return random_spectra(40, 12, seed), so3_grid(30, 6), volume, torch.zeros(40, 2, dtype=torch.float64)


def test_one_online_step_on_all_particles_at_rate_one_is_a_global_iteration(random_spectra):
    sp, grid, volume, origin = _case(random_spectra, 0)
    opts = _opts(online_iterations=1, online_batch=40, online_rate=1.0)
    online, _ = _online_phase(sp, volume, grid, origin, opts, 1.0, 0.5, seed=0, name="t")
    *_, full, _ = _iterate(sp, volume, grid, 0, origin, opts, 1.0, 0.5)
    assert torch.allclose(online.double(), full.double(), atol=1e-5 * float(full.abs().max()))


def test_online_step_moves_the_map_by_its_rate_towards_the_batch_map(random_spectra):
    sp, grid, volume, origin = _case(random_spectra, 2)
    whole = _opts(online_iterations=1, online_batch=40, online_rate=1.0)
    half = _opts(online_iterations=1, online_batch=40, online_rate=0.25)
    target, _ = _online_phase(sp, volume, grid, origin, whole, 1.0, 0.5, seed=0, name="t")
    moved, _ = _online_phase(sp, volume, grid, origin, half, 1.0, 0.5, seed=0, name="t")
    assert torch.allclose(moved, 0.75 * volume + 0.25 * target, atol=1e-5 * float(target.abs().max()))
    small = _opts(online_iterations=3, online_batch=8, online_rate=0.5)
    a, _ = _online_phase(sp, volume, grid, origin, small, 1.0, 0.5, seed=0, name="t")
    b, _ = _online_phase(sp, volume, grid, origin, small, 1.0, 0.5, seed=0, name="t")
    c, _ = _online_phase(sp, volume, grid, origin, small, 1.0, 0.5, seed=1, name="t")
    assert torch.equal(a, b) and not torch.allclose(a, c)  # seeded batches: a resumed run repeats it
