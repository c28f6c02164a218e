"""The search's soft spherical mask (``mask_diameter_angstrom``) and held iterations (``hold_iterations``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cryoforge.engine.search import SearchOptions, _iterate, map_mask
from cryoforge.ops.filters import soft_sphere_mask
from cryoforge.ops.search import so3_grid

ROOT = Path(__file__).resolve().parents[1]


def test_soft_sphere_mask_is_one_inside_a_raised_cosine_edge_and_zero_beyond():
    L, radius, edge = 20, 5.0, 2.0
    m = soft_sphere_mask(L, radius, edge)
    c = L // 2
    assert m.shape == (L, L, L) and m[c, c, c] == 1
    assert m[c, c, c + 5] == 1  # on the radius
    assert m[c, c, c + 6] == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))  # half-way through the edge
    assert m[c, c, c + 7] == pytest.approx(0.0, abs=1e-7)  # the edge's end
    assert m[c, c + 3, c + 4] == 1  # r = 5 along a diagonal
    assert float(m[0].max()) == 0  # the box's face at distance 10
    assert torch.equal(m, m.permute(2, 1, 0)) and torch.equal(m, m.permute(1, 0, 2))  # round
    # about the centre voxel L//2: voxel c + d and c - d are equally far
    assert torch.equal(m[c, c, c + 1 : c + 8], m[c, c, c - 7 : c].flip(0))


def test_map_mask_converts_the_diameter_to_voxels_of_the_box():
    assert map_mask(SearchOptions().mask_diameter_angstrom, 24, 9.0) is None  # no diameter: no mask
    m = map_mask(90.0, 24, 9.0)  # radius 5 voxels
    assert torch.equal(m, soft_sphere_mask(24, 5.0, 2.0))


def test_a_global_iteration_with_a_mask_returns_the_masked_map(random_spectra):
    sp, n = random_spectra(40, 12, 0), 40
    volume = torch.rand(12, 12, 12, generator=torch.Generator().manual_seed(1))
    opts = SearchOptions(size=12, directions=30, inplane=6, shift_extent_px=0, keep=4)
    origin = torch.zeros(n, 2, dtype=torch.float64)
    mask = soft_sphere_mask(12, 3.0, 2.0)
    *_, free, _ = _iterate(sp, volume, so3_grid(30, 6), 0, origin, opts, 1.0, 0.5)
    *_, masked, _ = _iterate(sp, volume, so3_grid(30, 6), 0, origin, opts, 1.0, 0.5, mask=mask)
    assert torch.allclose(masked, free * mask) and float(free[mask == 0].abs().max()) > 0
    assert float(masked[mask == 0].abs().max()) == 0


def test_held_iterations_stay_at_the_last_band_and_temperature_one(random_spectra):
    sp = random_spectra(40, 12, 0)
    volume = torch.rand(12, 12, 12, generator=torch.Generator().manual_seed(1))
    origin = torch.zeros(40, 2, dtype=torch.float64)
    opts = SearchOptions(
        size=12,
        directions=30,
        inplane=6,
        shift_extent_px=0,
        keep=4,
        iterations=5,
        band_px=(2.0, 5.0),
        temperature=50.0,
        hold_iterations=3,
    )
    last = _iterate(sp, volume, so3_grid(30, 6), 4, origin, opts, 1.0, 0.5)
    held = _iterate(sp, volume, so3_grid(30, 6), 7, origin, opts, 1.0, 0.5)
    first = _iterate(sp, volume, so3_grid(30, 6), 0, origin, opts, 1.0, 0.5)
    assert last[-1] == held[-1] == 5.0 and first[-1] == 2.0  # the band used
    assert torch.equal(last[0], held[0]) and torch.allclose(last[1], held[1])  # same assignment
    assert not torch.allclose(first[1], last[1])  # the first iteration's hotter weights differ


def test_a_masked_search_with_held_iterations_solves_the_demo_molecule(
    offcentre_clean, demo_search_run, tmp_path
):
    """4AKE (radius 37 Å), 1,200 noise-free particles off-centre by σ = 2 px in a 96 Å box: a 120 Å
    mask (which clips only the box's corners) and two held iterations still solve it, and the run
    counts the held iterations as steps. (A 90 Å mask clips the early, blurred maps in this small
    box and fails: 86°, docs/validation.md.)"""
    search = {"iterations": 12, "hold_iterations": 2, "refine_steps_deg": [2.0, 1.0]}
    search["mask_diameter_angstrom"] = 120
    demo_search_run(offcentre_clean, tmp_path / "run", search)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 12 + 2 + 2 + 20  # global, held, local steps, then the fit
    assert metrics["rot_median_deg"] < 5.0 and metrics["trans_median_px"] < 0.5
