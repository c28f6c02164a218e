"""Point-group symmetry: group matrices (RELION's convention), symmetrized maps, the two-fold
search and ``cryoforge symmetry``. Every check is analytic (maps made of Gaussians)."""

from __future__ import annotations

import itertools

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
