"""Point-group symmetry: group matrices (RELION's convention), symmetrized maps, the two-fold
search and ``cryoforge symmetry``. Every check is analytic (maps made of Gaussians)."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cryoforge.ops.rotations import random_rotations
from cryoforge.ops.symmetry import (
    axis_rotation,
    point_group_matrices,
    rotate_volume,
    symmetric_reconstruction,
    symmetrize_fourier,
    symmetrize_volume,
)


def gaussian_map(L: int, centres_px, sigma_px: float = 2.0, weights=None) -> torch.Tensor:
    """``(L, L, L)`` ``[z, y, x]`` map: Gaussians at ``(x, y, z)`` positions (px about ``L//2``)."""
    r = torch.arange(L, dtype=torch.float64) - L // 2
    gz, gy, gx = torch.meshgrid(r, r, r, indexing="ij")
    out = torch.zeros(L, L, L, dtype=torch.float64)
    for i, (x, y, z) in enumerate(centres_px):
        w = 1.0 if weights is None else weights[i]
        out += w * torch.exp(-((gx - x) ** 2 + (gy - y) ** 2 + (gz - z) ** 2) / (2 * sigma_px**2))
    return out.float()


def _orbit(points, mats) -> list[tuple[float, float, float]]:
    return [tuple((R @ torch.tensor(p, dtype=torch.float64)).tolist()) for p in points for R in mats]


def _in_group(M: torch.Tensor, mats: torch.Tensor, tol: float = 1e-9) -> bool:
    return bool(((mats - M).abs().amax((-1, -2)) < tol).any())


# ----------------------------------------------------------------------------- group matrices


@pytest.mark.parametrize("name", ["C1", "C2", "C3", "C4", "C7", "D1", "D2", "D3", "D4", "D7", "T", "O"])
def test_group_sizes_closure_and_determinant(name):
    mats = point_group_matrices(name)
    kind, n = name[0], int(name[1:] or 0)
    expected = {"C": n, "D": 2 * n, "T": 12, "O": 24}[kind]
    assert mats.shape == (expected, 3, 3)
    assert torch.allclose(mats[0], torch.eye(3, dtype=torch.float64))
    assert torch.allclose(torch.linalg.det(mats), torch.ones(expected, dtype=torch.float64), atol=1e-12)
    eye = torch.eye(3, dtype=torch.float64).expand_as(mats)
    assert torch.allclose(mats @ mats.transpose(-1, -2), eye, atol=1e-12)
    for A, B in itertools.product(mats, mats):
        assert _in_group(A @ B, mats, 1e-6), f"{name}: a product is not in the group"
    # all elements distinct
    d = (mats[:, None] - mats[None]).abs().amax((-1, -2)) + 10 * torch.eye(expected, dtype=torch.float64)
    assert d.min() > 1e-3


def test_relion_convention_c4_about_z_and_d2_two_fold_about_x():
    quarter_z = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)
    c4 = point_group_matrices("C4")
    assert torch.allclose(c4[1], quarter_z, atol=1e-12)  # the generator: +90° about z, x → y
    assert torch.allclose(
        c4[1] @ torch.tensor([1.0, 0, 0], dtype=torch.float64),
        torch.tensor([0.0, 1, 0], dtype=torch.float64),
        atol=1e-12,
    )
    d2 = point_group_matrices("D2")
    assert _in_group(torch.diag(torch.tensor([1.0, -1, -1], dtype=torch.float64)), d2)  # 180° about x
    assert _in_group(torch.diag(torch.tensor([-1.0, 1, -1], dtype=torch.float64)), d2)  # about y
    assert _in_group(torch.diag(torch.tensor([-1.0, -1, 1], dtype=torch.float64)), d2)  # about z
    d3 = point_group_matrices("D3")
    assert _in_group(torch.diag(torch.tensor([1.0, -1, -1], dtype=torch.float64)), d3)
    # T: RELION's three-fold along z; O: four-fold along z
    assert _in_group(axis_rotation((0, 0, 1), 120), point_group_matrices("T"))
    assert _in_group(axis_rotation((0, 0, 1), 90), point_group_matrices("O"))


@pytest.mark.parametrize("bad", ["", "X2", "C0", "D", "C-1", "I", "D2x", "c2.5"])
def test_unknown_group_names_are_refused_naming_the_supported_ones(bad):
    with pytest.raises(ValueError, match="supported: C<n>, D<n>"):
        point_group_matrices(bad)


def test_lower_case_names_are_accepted():
    assert torch.equal(point_group_matrices("d2"), point_group_matrices("D2"))


# ----------------------------------------------------------------------------- symmetrized maps

L = 32
ASYM = [(6.0, 2.0, 1.0), (-3.0, 5.0, -4.0), (2.0, -6.0, 3.0)]


def test_rotation_sense_in_real_space_coordinates():
    """A Gaussian at +x lands at +y under C4's generator: array ``[z, y, x]``, x = axis 2."""
    v = gaussian_map(L, [(6.0, 0.0, 0.0)])
    c = L // 2
    assert v[c, c, c + 6] == v.max()
    moved = rotate_volume(v, point_group_matrices("C4")[1])
    idx = np.unravel_index(int(moved.argmax()), moved.shape)
    assert tuple(int(i) for i in idx) == (c, c + 6, c)  # (z, y, x) = (0, +6, 0)
    # the two-fold about x takes +y to −y and +z to −z
    v = gaussian_map(L, [(0.0, 4.0, 7.0)])
    moved = rotate_volume(v, point_group_matrices("D2")[2])
    idx = np.unravel_index(int(moved.argmax()), moved.shape)
    assert tuple(int(i) for i in idx) == (c - 7, c - 4, c)


def test_d2_symmetrized_map_is_invariant_and_matches_the_analytic_orbit():
    v = gaussian_map(L, ASYM)
    mats = point_group_matrices("D2")
    w = symmetrize_volume(v, "D2")
    for R in mats:
        assert torch.allclose(rotate_volume(w, R), w, atol=1e-5)
    expected = gaussian_map(L, _orbit(ASYM, mats)) / 4
    assert torch.allclose(w, expected, atol=1e-4)


def test_symmetric_map_is_its_own_symmetrization_even_for_non_grid_rotations():
    mats = point_group_matrices("D2")
    sym = gaussian_map(L, _orbit(ASYM, mats))
    assert torch.allclose(symmetrize_volume(sym, "D2"), sym, atol=1e-5)
    # D3 rotations (120°) resample between voxels: smooth Gaussians come back to ~1 %
    mats3 = point_group_matrices("D3")
    sym3 = gaussian_map(L, _orbit(ASYM, mats3), sigma_px=2.5)
    w3 = symmetrize_volume(sym3, "D3")
    assert (w3 - sym3).abs().max() < 0.02 * sym3.max()
    for R in mats3:
        assert (rotate_volume(w3, R) - w3).abs().max() < 0.02 * sym3.max()


def test_fourier_symmetrization_equals_the_real_space_one():
    from cryoforge.ops.fft import fourier_to_volume, volume_to_fourier

    v = gaussian_map(L, ASYM)
    spec = volume_to_fourier(v.double())
    weights = torch.rand(L, L, L, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    spec_sym, w_sym = symmetrize_fourier(spec, weights, "D2")
    back = fourier_to_volume(spec_sym).float()
    assert torch.allclose(back, symmetrize_volume(v, "D2"), atol=2e-3 * float(v.max()))
    for R in point_group_matrices("D2"):
        inner = slice(1, L)  # index 0 is the Nyquist plane, whose 180° mate is outside the grid
        rotated = rotate_volume(w_sym, R)[inner, inner, inner]
        assert torch.allclose(rotated.double(), w_sym[inner, inner, inner], atol=1e-6)


def test_symmetric_reconstruction_imposes_the_group_and_c1_is_the_plain_volume():
    from cryoforge.ops.fft import rfft2_images
    from cryoforge.ops.grids import half_plane_query
    from cryoforge.ops.projection import BackprojectionSums, project_real_space

    n = 16
    v = gaussian_map(n, [(3.0, 1.0, 0.0), (-2.0, 3.0, -2.0)], sigma_px=1.5)
    R = random_rotations(60, torch.Generator().manual_seed(1), dtype=torch.float64)
    imgs = project_real_space(v, R).double()
    flat, freqs = half_plane_query(n)
    acc = BackprojectionSums.zeros(n)
    acc.add(rfft2_images(imgs).reshape(len(R), -1)[:, flat], freqs, R)
    assert torch.allclose(symmetric_reconstruction(acc, "C1"), acc.volume(), atol=1e-6)
    sym = symmetric_reconstruction(acc, "D2")
    for M in point_group_matrices("D2"):
        inner = slice(2, n - 1)
        assert torch.allclose(
            rotate_volume(sym, M)[inner, inner, inner],
            sym[inner, inner, inner],
            atol=1e-3 * float(sym.abs().max()),
        )


# ----------------------------------------------------------------------------- the axis search

D2_POINTS = [(12.0, 4.0, 2.0), (-5.0, 10.0, -8.0), (4.0, -3.0, 9.0)]


@pytest.fixture(scope="module")
def rotated_d2():
    """A 64³ D2 map of Gaussians turned by a known rotation ``R``: its two-folds are ``R``'s columns."""
    v = gaussian_map(64, _orbit(D2_POINTS, point_group_matrices("D2")), sigma_px=3.0)
    R = random_rotations(1, torch.Generator().manual_seed(3), dtype=torch.float64)[0]
    return rotate_volume(v, R), R


@pytest.fixture(scope="module")
def asymmetric():
    pts = [(12.0, 4.0, 2.0), (-5.0, 10.0, -8.0), (4.0, -3.0, 9.0), (-9.0, -7.0, 5.0), (2.0, 8.0, 12.0)]
    return gaussian_map(64, pts, sigma_px=3.0, weights=[1.0, 0.8, 1.2, 0.9, 0.7])


def test_search_finds_the_three_two_folds_of_a_rotated_d2_map_quickly(rotated_d2):
    from cryoforge.metrics.symmetry import analyse_symmetry, axis_angle_deg

    vol, R = rotated_d2
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    rep = analyse_symmetry(vol, 2.0, "D2", resolution_angstrom=15)
    elapsed = time.perf_counter() - t0
    assert elapsed < 45, f"{elapsed:.1f} s for a 64³ map"
    v = rep.verdict
    assert v.consistent, v.reason
    assert len(v.axes) == 3
    for a in v.axes:
        assert a.correlation > 0.95
        assert (
            min(
                float(axis_angle_deg(torch.tensor(a.direction, dtype=torch.float64), R[:, i]))
                for i in range(3)
            )
            < 3
        )
    assert all(abs(angle - 90) < 3 for _, _, angle in v.angles_deg) and len(v.angles_deg) == 3
    # each of R's columns found once
    found = torch.tensor([a.direction for a in v.axes], dtype=torch.float64)
    assert sorted(int(axis_angle_deg(found, R[:, i]).argmin()) for i in range(3)) == [0, 1, 2]
    # the envelope of the orbit: three axes of a box, in Å
    assert all(40 < e < 90 for e in rep.envelope.extents_angstrom)


def test_asymmetric_map_is_not_d2(asymmetric):
    from cryoforge.metrics.symmetry import analyse_symmetry

    rep = analyse_symmetry(asymmetric, 2.0, "D2", resolution_angstrom=15)
    assert not rep.verdict.consistent
    assert "no three" in rep.verdict.reason or "two-fold" in rep.verdict.reason


def test_c4_axis_search_and_dn_verdict():
    """A D4 map: its four-fold is z, and D4 is recognised (the n-fold plus a perpendicular two-fold)."""
    from cryoforge.metrics.symmetry import analyse_symmetry, axis_angle_deg

    v = gaussian_map(
        40, _orbit([(9.0, 3.0, 4.0), (-2.0, 7.0, -6.0)], point_group_matrices("D4")), sigma_px=2.5
    )
    rep = analyse_symmetry(v, 2.0, "D4")
    assert rep.verdict.consistent, rep.verdict.reason
    z = torch.tensor([0.0, 0, 1], dtype=torch.float64)
    assert float(axis_angle_deg(torch.tensor(rep.nfold[0].direction, dtype=torch.float64), z)) < 2
    assert rep.nfold[0].correlation > 0.95


def test_envelope_extents_of_an_ellipsoid():
    from cryoforge.metrics.symmetry import envelope_extents

    L = 48
    r = torch.arange(L, dtype=torch.float64) - L // 2
    gz, gy, gx = torch.meshgrid(r, r, r, indexing="ij")
    box = ((gx.abs() <= 10) & (gy.abs() <= 5) & (gz.abs() <= 3)).float()  # 21 × 11 × 7 voxels
    env = envelope_extents(box, 1.5, fraction_of_max=0.5)
    assert env.extents_angstrom == pytest.approx((21 * 1.5, 11 * 1.5, 7 * 1.5), abs=1e-6)
    assert abs(env.axes[0][0]) == pytest.approx(1, abs=1e-9)
    assert env.n_voxels == 21 * 11 * 7
    env_sigma = envelope_extents(box, 1.0, sigma_level=1.0)
    assert env_sigma.extents_angstrom == pytest.approx((21, 11, 7), abs=1e-6)


# ----------------------------------------------------------------------------- the command


def _write(path, vol, voxel=2.0):
    from cryoforge.io.mrc import write_mrc

    write_mrc(path, vol.numpy(), voxel)
    return path


def test_symmetry_command_reports_d2_and_imposes_it(tmp_path, rotated_d2):
    from click.testing import CliRunner

    from cryoforge.cli import cli
    from cryoforge.io.mrc import read_map
    from cryoforge.metrics.symmetry import axis_angle_deg

    vol, R = rotated_d2
    src = _write(tmp_path / "d2.mrc", vol)
    out_json = tmp_path / "sym.json"
    r = CliRunner().invoke(
        cli, ["symmetry", str(src), "--group", "d2", "--resolution", "15", "--json", str(out_json)]
    )
    assert r.exit_code == 0, r.output
    assert (
        "D2: yes" in r.output and "two-fold axes" in r.output and "envelope" in r.output and "Å" in r.output
    )
    data = json.loads(out_json.read_text())
    assert data["verdict"]["consistent"] is True
    for a in data["verdict"]["axes"]:
        d = torch.tensor(a["direction_xyz"], dtype=torch.float64)
        assert a["correlation"] > 0.95
        assert min(float(axis_angle_deg(d, R[:, i])) for i in range(3)) < 3

    # impose D2 on a map that is D2 in RELION's frame (x, y, z two-folds): it comes back unchanged
    plain = gaussian_map(64, _orbit(D2_POINTS, point_group_matrices("D2")), sigma_px=3.0)
    p = _write(tmp_path / "plain.mrc", plain, voxel=1.7)
    out = tmp_path / "out.mrc"
    r = CliRunner().invoke(cli, ["symmetry", str(p), "--impose", "D2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    back, voxel = read_map(out)
    assert voxel == pytest.approx(1.7, rel=1e-5)
    assert np.allclose(back, plain.numpy(), atol=1e-5)
    r = CliRunner().invoke(cli, ["symmetry", str(p), "--impose", "D2", "--out", str(out)])
    assert r.exit_code == 2 and "--overwrite" in r.output


def test_symmetry_command_says_no_d2_for_an_asymmetric_map(tmp_path, asymmetric):
    from click.testing import CliRunner

    from cryoforge.cli import cli

    src = _write(tmp_path / "asym.mrc", asymmetric)
    r = CliRunner().invoke(cli, ["symmetry", str(src), "--resolution", "15"])
    assert r.exit_code == 0, r.output
    assert "D2: no" in r.output


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["symmetry", "{dir}/missing.mrc"], ["missing.mrc"]),
        (["symmetry", "{map}", "--group", "X7"], ["--group", "supported: C<n>, D<n>"]),
        (["symmetry", "{map}", "--group", "O"], ["--group", "C<n> and D<n>"]),
        (["symmetry", "{map}", "--impose", "Q2", "--out", "{dir}/o.mrc"], ["--impose", "supported"]),
        (["symmetry", "{map}", "--impose", "D2"], ["--impose and --out"]),
        (["symmetry", "{notmrc}"], ["notmrc.mrc"]),
    ],
)
def test_symmetry_command_bad_inputs_are_one_line(tmp_path, args, needles):
    from click.testing import CliRunner

    from cryoforge.cli import cli
    from cryoforge.testing import assert_one_line_error

    m = _write(tmp_path / "m.mrc", gaussian_map(16, [(2.0, 1.0, 0.0)]))
    bad = tmp_path / "notmrc.mrc"
    bad.write_text("not a map" * 200)
    args = [a.format(dir=tmp_path, map=m, notmrc=bad) for a in args]
    assert_one_line_error(CliRunner().invoke(cli, args), *needles)


# ----------------------------------------------------------------------------- a real structure

STRUCTURES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "structures"


def test_hiv_protease_dimer_has_its_two_fold_and_is_not_d2():
    """4E43 (HIV protease, a C2 homodimer): the search finds the two-fold that the atoms give
    (the line through the midpoints of matching Cα pairs of chains A and B) and says no to D2."""
    pdb = STRUCTURES / "4E43.pdb"
    if not pdb.exists():
        pytest.skip(f"{pdb} is absent (shared data not mounted)")
    pytest.importorskip("gemmi")
    import gemmi

    from cryoforge.metrics.symmetry import analyse_symmetry, axis_angle_deg
    from cryoforge.simulation.potential import atomic_model_to_map

    vol = torch.from_numpy(atomic_model_to_map(pdb, 64, 1.5))
    st = gemmi.read_structure(str(pdb))
    ca = {}
    for ch in st[0]:
        for res in ch:
            for at in res:
                if at.name == "CA":
                    ca[(ch.name, res.seqid.num)] = (at.pos.x, at.pos.y, at.pos.z)
    mids = torch.tensor(
        [
            [(a + b) / 2 for a, b in zip(ca[("A", n)], ca[("B", n)], strict=True)]
            for (c, n) in ca
            if c == "A" and ("B", n) in ca
        ],
        dtype=torch.float64,
    )
    centred = mids - mids.mean(0)
    axis = torch.linalg.eigh(centred.T @ centred)[1][:, -1]

    rep = analyse_symmetry(vol, 1.5, "D2", resolution_angstrom=8)
    best = rep.twofold[0]
    assert best.correlation > 0.85
    assert float(axis_angle_deg(torch.tensor(best.direction, dtype=torch.float64), axis)) < 5
    assert not rep.verdict.consistent
    c2 = analyse_symmetry(vol, 1.5, "C2", resolution_angstrom=8)
    assert c2.verdict.consistent


def test_asymmetric_ribosome_map_has_no_two_fold():
    """The 70S ribosome (``relion_project/clean70SRibosome_vol.npy``, asymmetric): no axis
    correlates above 0.5, so no D2."""
    path = STRUCTURES.parent / "relion_project" / "clean70SRibosome_vol.npy"
    if not path.exists():
        pytest.skip(f"{path} is absent (shared data not mounted)")
    from cryoforge.metrics.symmetry import analyse_symmetry

    vol = torch.from_numpy(np.load(path).astype(np.float32))
    rep = analyse_symmetry(vol, 4.0, "D2", resolution_angstrom=20)
    assert rep.twofold and max(a.correlation for a in rep.twofold) < 0.5
    assert not rep.verdict.consistent
