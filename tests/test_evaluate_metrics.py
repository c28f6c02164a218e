"""Map evaluation: FSC shells, resolution bounds (no extrapolation), sub-pixel and blind alignment."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cryoforge.metrics.alignment import align_map
from cryoforge.metrics.fsc import FSCReport, find_crossing, fsc, fsc_report, resolution_at
from cryoforge.metrics.resample import mirror_z, rotate_map, shift_map
from cryoforge.metrics.summary import metric_rows, write_json
from cryoforge.metrics.translation import estimate_shift
from cryoforge.ops.rotations import geodesic_distance_deg, random_rotations
from cryoforge.ops.search import uniform_rotations, uniform_spacing_deg

J = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))


@pytest.fixture(scope="module")
def adk_map() -> torch.Tensor:
    """Adenylate kinase (the built-in demo structure) at 32³, 3 Å/px: a realistic, chiral map."""
    from cryoforge.simulation.potential import atomic_model_to_map, demo_structure_path

    return torch.from_numpy(atomic_model_to_map(demo_structure_path(), 32, 3.0))


def phase_ramp_shift(volume: torch.Tensor, shift_xyz: tuple[float, float, float]) -> torch.Tensor:
    """``V(x - t)`` by an ``exp(-2πi k·t)`` ramp, written here with numpy (independent of cryoforge)."""
    L = volume.shape[-1]
    f = np.fft.fftfreq(L)
    kz, ky, kx = np.meshgrid(f, f, f, indexing="ij")
    ramp = np.exp(-2j * np.pi * (kx * shift_xyz[0] + ky * shift_xyz[1] + kz * shift_xyz[2]))
    return torch.from_numpy(np.fft.ifftn(np.fft.fftn(volume.double().numpy()) * ramp).real).float()


def fsc05_px(a: torch.Tensor, b: torch.Tensor) -> float:
    return find_crossing(*fsc(a, b), 0.5).resolution_px


# ----------------------------------------------------------------------------- FSC shells


def test_zero_shell_reads_one_even_for_opposite_means():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 16, 16, generator=g) + 1.0
    b = torch.randn(16, 16, 16, generator=g) - 1.0  # raw DC correlation would be -1
    freqs, values = fsc(a, b)
    assert values[0] == 1.0 and freqs[0] == 0.0
    assert len(values) == 9 and freqs[-1] == pytest.approx(0.5)


# ----------------------------------------------------------------------------- resolution bounds


def test_curve_above_threshold_to_nyquist_reports_the_nyquist_bound():
    freqs = np.arange(17) / 32
    rep = FSCReport(freqs, np.full(17, 0.9), 3.0)
    c = rep.crossing(0.5)
    assert c.bound == "nyquist" and c.freq_per_px == 0.5 and c.resolution_px == 2.0
    assert rep.resolution_label(0.5) == "≤ 6.0 Å (Nyquist)"
    s = rep.summary((0.5,))
    assert s["resolution_0.5_angstrom"] == 6.0 and s["resolution_0.5_px"] == 2.0
    assert s["resolution_0.5_bound"] == "nyquist" and s["resolution_0.5_text"] == "≤ 6.0 Å (Nyquist)"


def test_curve_below_threshold_from_first_shell_is_not_reached():
    freqs = np.arange(17) / 32
    # shell 0 as a raw FSC might read it (-1) and a curve that rises a little: the old code
    # extrapolated a crossing from these two shells; there is no crossing to report
    values = np.concatenate([[-1.0, 0.30, 0.31], np.full(14, 0.2)])
    assert math.isnan(resolution_at(freqs, values, 0.5))
    rep = FSCReport(freqs, values, 3.0)
    c = rep.crossing(0.5)
    assert c.bound == "not_reached" and math.isnan(c.resolution_angstrom(3.0))
    assert rep.resolution_label(0.5) == "not reached (> 96.0 Å)"
    s = rep.summary((0.5,))
    assert math.isnan(s["resolution_0.5_angstrom"]) and math.isnan(s["resolution_0.5_px"])
    assert s["resolution_0.5_bound"] == "not_reached"


def test_crossing_between_shells_is_interpolated_not_extrapolated():
    freqs = np.array([0, 0.1, 0.2, 0.3])
    c = find_crossing(freqs, np.array([1.0, 0.9, 0.3, 0.1]), 0.5)
    assert c.bound is None and c.freq_per_px == pytest.approx(0.1 + 0.4 / 0.6 * 0.1)
    assert c.label(2.0) == f"{2.0 / c.freq_per_px:.1f} Å"
    # the crossing lies between the bracketing shells, never beyond the measured band
    rng = np.random.default_rng(0)
    for _ in range(200):
        v = np.concatenate([[1.0], np.sort(rng.uniform(-0.2, 1.0, 15))[::-1]])
        c = find_crossing(np.arange(16) / 30, v, 0.5)
        assert c.bound is not None or 1 / 30 <= c.freq_per_px <= 15 / 30


def test_metrics_json_is_strict_and_table_reads_bounds(tmp_path):
    rep_nyq = FSCReport(np.arange(17) / 32, np.full(17, 0.9), 3.0)
    rep_none = FSCReport(np.arange(17) / 32, np.concatenate([[1.0], np.full(16, 0.1)]), 3.0)
    metrics = {
        **rep_nyq.summary((0.5,)),
        **{"halfmap_" + k: v for k, v in rep_none.summary((0.143,)).items()},
        "rot_median_deg": 1.23456,
        "stage_wall_s": {"search": 84.23456, "fit": 12.5},
        "_A": None,
    }
    write_json(tmp_path / "m.json", metrics)
    text = (tmp_path / "m.json").read_text()
    m = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert m["halfmap_resolution_0.143_angstrom"] is None and "_A" not in m
    assert m["resolution_0.5_bound"] == "nyquist" and m["resolution_0.5_px"] == 2.0
    rows = dict(metric_rows(metrics))
    assert rows == {
        "resolution_0.5": "≤ 6.0 Å (Nyquist), 2.00 px",
        "halfmap_resolution_0.143": "not reached (> 96.0 Å)",
        "rot_median_deg": "1.235",
        "stage_wall_s": "search 84.23, fit 12.5",
    }


def test_evaluate_files_writes_bounds_for_real_maps(adk_map, tmp_path):
    """Map vs itself stays at 1 to Nyquist (a bound); map vs its negative is below 0.143 at once."""
    from cryoforge.io.mrc import write_mrc
    from cryoforge.metrics.files import evaluate_files

    write_mrc(tmp_path / "map.mrc", adk_map.numpy(), 3.0)
    write_mrc(tmp_path / "neg.mrc", -adk_map.numpy(), 3.0)
    path, neg = str(tmp_path / "map.mrc"), str(tmp_path / "neg.mrc")
    m = evaluate_files(path, path, neg, None, None, tmp_path / "ev")
    assert m["resolution_0.5_bound"] == "nyquist" and m["resolution_0.5_px"] == 2.0
    assert m["resolution_0.5_text"] == "≤ 6.0 Å (Nyquist)" and not m["map_mirrored"]
    assert m["halfmap_resolution_0.143_bound"] == "not_reached"
    assert math.isnan(m["halfmap_resolution_0.143_angstrom"])
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["halfmap_resolution_0.143_angstrom"] is None
    assert saved["halfmap_resolution_0.143_text"] == "not reached (> 96.0 Å)"


# ----------------------------------------------------------------------------- translation


def test_shift_map_is_a_periodic_translation():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(12, 12, 12, generator=g)
    assert torch.allclose(shift_map(v, (2, -1, 3)), torch.roll(v, (3, -1, 2), (0, 1, 2)), atol=1e-5)
    t = (0.5, -0.3, 0.4)
    assert torch.allclose(shift_map(v, t), phase_ramp_shift(v, t), atol=1e-5)


def test_subpixel_shift_aligns_back_to_the_unshifted_resolution(adk_map):
    """A (0.5, -0.3, 0.4) px phase-ramp shift; known rotation (identity), translation searched."""
    t = (0.5, -0.3, 0.4)
    shifted = phase_ramp_shift(adk_map, t)
    assert fsc05_px(shifted, adk_map) > 2.3  # unaligned, the sub-pixel offset costs resolution
    al = align_map(shifted, adk_map, torch.eye(3), False)
    assert al.shift_px.numpy() == pytest.approx(-np.array(t), abs=0.02)
    assert abs(fsc05_px(al.aligned, adk_map) - fsc05_px(adk_map, adk_map)) <= 0.1
    assert estimate_shift(adk_map, shifted).numpy() == pytest.approx(np.array(t), abs=0.02)


# ----------------------------------------------------------------------------- blind alignment


def test_uniform_rotations_are_uniform():
    grid = uniform_rotations(2000)
    assert torch.allclose(grid @ grid.transpose(-1, -2), torch.eye(3, dtype=grid.dtype).expand(2000, 3, 3))
    assert torch.linalg.det(grid).min() > 0.999
    probes = random_rotations(300, torch.Generator().manual_seed(0), torch.float64)
    nearest = torch.stack([geodesic_distance_deg(grid, p.expand(2000, 3, 3)).min() for p in probes])
    assert nearest.max() < 1.6 * uniform_spacing_deg(2000)  # no holes: every rotation is near the grid


@pytest.mark.parametrize("case", range(8))
def test_blind_alignment_recovers_hand_rotation_and_subpixel_shift(adk_map, case):
    """Random rotation (odd cases also mirrored) and random sub-pixel shift, aligned without poses.

    Fair reference: the truth's resolution can only be measured through the same resampling, so
    the moved copy is also brought back with the *known exact* inverse through the very steps
    ``align_map`` uses (``mirror_z`` if mirrored, one trilinear ``rotate_map``, a phase-ramp
    ``shift_map``). The blind alignment must match that copy's FSC-0.5 within 0.1 px, stay within
    0.05 of its FSC in every shell, find the hand, and get the rotation within 1.5°.
    """
    g = torch.Generator().manual_seed(100 + case)
    R = random_rotations(1, g, torch.float64)[0]
    mirrored = case % 2 == 1
    t = tuple((torch.rand(3, generator=g, dtype=torch.float64) * 4 - 2).tolist())
    M = J @ R if mirrored else R
    moved = phase_ramp_shift(rotate_map(adk_map, M), t)  # moved(x) = V(M (x - t))

    A_true = J @ M.T if mirrored else M.T  # (mirror_z of) moved, resampled at A x, is V(x - M t)
    exact = shift_map(
        rotate_map(mirror_z(moved) if mirrored else moved, A_true),
        -(M @ torch.tensor(t, dtype=torch.float64)),
    )
    al = align_map(moved, adk_map)

    assert al.mirrored == mirrored
    A = J @ al.rotation.double() if al.mirrored else al.rotation.double()
    assert float(geodesic_distance_deg((M @ A)[None], torch.eye(3, dtype=torch.float64)[None])) < 1.5
    ref_curve, got_curve = fsc(exact, adk_map)[1], fsc(al.aligned, adk_map)[1]
    assert abs(fsc05_px(al.aligned, adk_map) - fsc05_px(exact, adk_map)) <= 0.1
    assert (got_curve - ref_curve).min() > -0.05
    assert fsc_report(al.aligned, adk_map, 3.0).crossing(0.5).bound == "nyquist"
