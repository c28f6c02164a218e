"""Physics of the pure ops, against analytic results and independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryoforge.ops.ctf import ctf_2d, electron_wavelength_angstrom
from cryoforge.ops.fft import (
    fft2_centered,
    fourier_crop,
    fourier_to_volume,
    irfft2_images,
    rfft2_images,
    volume_to_fourier,
)
from cryoforge.ops.grids import centered_freqs, half_plane_query, rfft_grid_2d
from cryoforge.ops.images import GRID_SYMMETRIES_XY, apply_grid_symmetry, rotate_pi
from cryoforge.ops.projection import project_real_space
from cryoforge.ops.rotations import grid_symmetry_pose, random_rotations, rotate_pose_pi
from cryoforge.ops.shift import phase_shift, translate_images
from cryoforge.ops.slicing import central_slice_coords


def test_centered_freqs_match_fftfreq():
    for L in (7, 8, 32):
        f = centered_freqs(L).double().numpy()
        assert np.allclose(f, np.fft.fftshift(np.fft.fftfreq(L)))
        assert f[L // 2] == 0


def test_half_plane_is_about_0p4_l2_and_inside_nyquist():
    idx, k = half_plane_query(64)
    assert 0.37 * 64**2 < len(idx) < 0.41 * 64**2
    assert (k.norm(dim=1) < 0.5).all() and (k[:, 0] >= 0).all()


@pytest.mark.parametrize("L", [16, 17])
def test_fourier_slice_at_identity_equals_fft_of_z_projection(L):
    vol = torch.randn(L, L, L, dtype=torch.float64)
    spec3 = volume_to_fourier(vol)  # [kz, ky, kx], DFT / L
    proj = vol.sum(0)  # z projection
    spec2 = fft2_centered(proj)  # orthonormal: DFT / L
    assert torch.allclose(spec3[L // 2], spec2, atol=1e-9)
    # the slicing function itself: identity rotation gives kz = 0
    k2 = torch.randn(5, 2)
    k3 = central_slice_coords(torch.eye(3)[None], k2)
    assert torch.allclose(k3[0, :, :2], k2) and (k3[..., 2] == 0).all()


def test_central_slice_is_r_transpose_k():
    R = random_rotations(3, torch.Generator().manual_seed(1))
    k2 = torch.randn(7, 2)
    k3 = central_slice_coords(R, k2)
    manual = torch.einsum("bji,nj->bni", R, torch.cat([k2, torch.zeros(7, 1)], 1))
    assert torch.allclose(k3, manual, atol=1e-6)


def test_real_space_projection_matches_fourier_slice_for_axis_rotation():
    """A 90° rotation about y maps voxels exactly onto voxels: the real-space projection of the
    rotated map must equal the projection along x of the original (an exact, analytic case)."""
    L = 12
    vol = torch.rand(L, L, L)
    # R = rotation by +90° about y; slice at Rᵀk ⇒ projection P(x, y) = Σ_z V(Rᵀ r)
    R = torch.tensor([[0.0, 0, -1], [0, 1, 0], [1, 0, 0]])  # RELION tilt = 90°
    P = project_real_space(vol, R[None])[0]
    # Rᵀ r = (z, y, -x) ⇒ P(x, y) = Σ_x' vol[z' = 2c - x, y, x'] (pixel indices, c = L//2)
    ref = vol.sum(2)  # [z', y]
    c = L // 2
    expect = torch.zeros(L, L)
    for x in range(1, L):  # x = 0 maps to z' = L, outside the box
        expect[:, x] = ref[2 * c - x, :]
    inner = slice(1, L)
    assert torch.allclose(P[inner, inner], expect[inner, inner], atol=1e-4)


def test_phase_shift_equals_integer_translation():
    L = 16
    img = torch.randn(2, L, L, dtype=torch.float64)
    shifted = translate_images(img, torch.tensor([[3.0, -2.0], [0.0, 5.0]], dtype=torch.float64))
    assert torch.allclose(shifted[0], torch.roll(img[0], shifts=(-2, 3), dims=(0, 1)), atol=1e-9)
    assert torch.allclose(shifted[1], torch.roll(img[1], shifts=(5, 0), dims=(0, 1)), atol=1e-9)


def test_phase_shift_formula():
    k = torch.tensor([[0.25, 0.0], [0.0, 0.125]])
    p = phase_shift(k, torch.tensor([[1.0, 2.0]]))
    assert torch.allclose(p, torch.exp(-2j * math.pi * torch.tensor([[0.25, 0.25]])).to(p.dtype), atol=1e-6)


def test_rfft_roundtrip_and_ortho_scaling():
    x = torch.randn(3, 10, 10, dtype=torch.float64)
    h = rfft2_images(x)
    assert torch.allclose(irfft2_images(h, 10), x)
    assert h.shape == (3, 10, 6)
    assert torch.allclose(h[:, 0, 0].real, x.sum((-1, -2)) / 10)  # DC of ortho DFT = sum / L


def test_volume_fourier_roundtrip():
    v = torch.randn(9, 9, 9, dtype=torch.float64)
    assert torch.allclose(fourier_to_volume(volume_to_fourier(v)), v)


def test_fourier_crop_keeps_low_frequencies():
    L = 32
    r = torch.arange(L) - L // 2
    y, x = torch.meshgrid(r, r, indexing="ij")
    img = torch.exp(-(x**2 + y**2) / (2 * 4.0**2)).double()
    small = fourier_crop(img[None], 16)[0]
    assert small.shape == (16, 16)
    assert float(small.mean()) == pytest.approx(float(img.mean()), rel=1e-6)
    assert int(small.argmax()) == 8 * 16 + 8  # centre stays at L//2


@pytest.mark.parametrize("L", [8, 9])
def test_rotate_pi_about_box_centre(L):
    img = torch.zeros(L, L)
    c = L // 2
    img[c + 1, c + 3] = 1  # y = +1, x = +3 from the centre
    out = rotate_pi(img)
    assert out[c - 1, c - 3] == 1 and out.sum() == 1
    assert torch.equal(rotate_pi(rotate_pi(img)), img)


def test_rotate_pi_pose_rule_matches_rendering():
    """Projection of a map at pose diag(-1,-1,1)·R equals the π-rotated projection at R."""
    L = 16
    g = torch.Generator().manual_seed(3)
    vol = torch.rand(L, L, L, generator=g)
    R = random_rotations(1, g)
    R2, _ = rotate_pose_pi(R, torch.zeros(1, 2))
    a = rotate_pi(project_real_space(vol, R))
    b = project_real_space(vol, R2.float())
    assert torch.allclose(a[0, 1:, 1:], b[0, 1:, 1:], atol=1e-4)


@pytest.mark.parametrize("L", [8, 9])
@pytest.mark.parametrize("name", list(GRID_SYMMETRIES_XY))
def test_grid_symmetry_moves_pixels_by_its_matrix(L, name):
    """A pixel at offset u = (x, y) from the centre lands at A u; eight distinct, invertible maps."""
    A = GRID_SYMMETRIES_XY[name]
    c = L // 2
    img = torch.zeros(L, L)
    img[c + 1, c + 3] = 1  # x = +3, y = +1
    out = apply_grid_symmetry(img, A)
    x, y = A[0][0] * 3 + A[0][1] * 1, A[1][0] * 3 + A[1][1] * 1
    assert out[c + y, c + x] == 1 and out.sum() == 1
    inverse = tuple(zip(*A, strict=True))  # Aᵀ = A⁻¹
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(2, L, L, generator=g)
    assert torch.equal(apply_grid_symmetry(apply_grid_symmetry(noise, A), inverse), noise)


def test_grid_symmetries_are_the_eight_of_d4_and_rot180_is_rotate_pi():
    g = torch.Generator().manual_seed(1)
    img = torch.rand(10, 10, generator=g)
    outs = [apply_grid_symmetry(img, A) for A in GRID_SYMMETRIES_XY.values()]
    assert len({tuple(o.flatten().tolist()) for o in outs}) == 8
    assert torch.equal(apply_grid_symmetry(img, GRID_SYMMETRIES_XY["rot180"]), rotate_pi(img))


@pytest.mark.parametrize("name", list(GRID_SYMMETRIES_XY))
def test_grid_symmetry_pose_rule_matches_rendering(name):
    """Moving a projection at R by A equals projecting at B·R (B = [[A, 0], [0, det A]]).

    The reference is the real-space line integral, not the Fourier renderer; mirrors included
    (a mirror image is the projection seen from the other side)."""
    L = 16
    g = torch.Generator().manual_seed(3)
    z = torch.arange(L) - L // 2
    zz, yy, xx = torch.meshgrid(z, z, z, indexing="ij")
    ball = (zz**2 + yy**2 + xx**2) < 25  # inside the box at every rotation: z → −z is exact
    vol = torch.rand(L, L, L, generator=g) * ball
    R = random_rotations(2, g)
    A = GRID_SYMMETRIES_XY[name]
    R2, _ = grid_symmetry_pose(A, R, torch.zeros(2, 2))
    a = apply_grid_symmetry(project_real_space(vol, R), A)
    b = project_real_space(vol, R2.float())
    assert torch.allclose(a, b, atol=1e-4)
    assert torch.allclose(torch.linalg.det(R2), torch.ones(2))


@pytest.mark.parametrize("name", ["rot90", "flip_x", "antitranspose"])
def test_grid_symmetry_shift_rule(name):
    """Shift then move equals move then shift by A t (odd L: no Nyquist term to break the symmetry)."""
    L = 15
    g = torch.Generator().manual_seed(4)
    img = torch.rand(1, L, L, generator=g).double()
    t = torch.tensor([[1.5, -2.25]], dtype=torch.float64)
    A = GRID_SYMMETRIES_XY[name]
    _, t2 = grid_symmetry_pose(A, torch.eye(3, dtype=torch.float64)[None], t)
    a = apply_grid_symmetry(translate_images(img, t), A)
    b = translate_images(apply_grid_symmetry(img, A), t2)
    assert torch.allclose(a, b, atol=1e-9)


def test_wavelength_relativistic_values():
    # Published values: 300 kV → 0.019687 Å, 200 kV → 0.025079 Å, 100 kV → 0.037014 Å
    for kv, lam in ((300, 0.019687), (200, 0.025079), (100, 0.037014)):
        assert float(electron_wavelength_angstrom(kv)) == pytest.approx(lam, abs=2e-6)


def _ctf_reference(kx, ky, du, dv, ang, kv, cs, w, ps, b=0.0):
    """RELION's own form (``ctf.h``): ``CTF = −sin γ``, ``γ = K1 (−Δf) s² + K2 s⁴ − K5 − K3``,
    with ``K1 = π λ``, ``K2 = (π/2) Cs λ³``, ``K3 = atan(w / sqrt(1 − w²))``, ``K5`` the phase shift."""
    v = kv * 1e3
    lam = 12.2643247 / np.sqrt(v * (1 + 0.978466e-6 * v))
    s2 = kx**2 + ky**2
    th = np.arctan2(ky, kx)
    df = 0.5 * (du + dv) + 0.5 * (du - dv) * np.cos(2 * (th - np.deg2rad(ang)))
    k1, k2 = np.pi * lam, 0.5 * np.pi * cs * 1e7 * lam**3
    k3, k5 = np.arctan(w / np.sqrt(1 - w**2)), np.deg2rad(ps)
    gamma = k1 * (-df) * s2 + k2 * s2**2 - k5 - k3
    return -np.sin(gamma) * np.exp(-b * s2 / 4)


@pytest.mark.parametrize("du,dv,ang", [(10000, 10000, 0), (15000, 12000, 30), (25000, 24000, -75)])
@pytest.mark.parametrize(
    "kv,cs,w,ps,b", [(300, 2.7, 0.1, 0, 0), (200, 2.0, 0.07, 90, 50), (100, 0.01, 0.1, 45, 0)]
)
def test_ctf_matches_formula_on_grid(du, dv, ang, kv, cs, w, ps, b):
    px = 1.5
    k = rfft_grid_2d(32).reshape(-1, 2).double() / px
    t = lambda v: torch.tensor([float(v)], dtype=torch.float64)
    got = ctf_2d(k, t(du), t(dv), t(ang), t(kv), t(cs), t(w), t(ps), t(b))[0].numpy()
    ref = _ctf_reference(k[:, 0].numpy(), k[:, 1].numpy(), du, dv, ang, kv, cs, w, ps, b)
    assert np.allclose(got, ref, atol=1e-10)
    assert got[0] == pytest.approx(
        w * math.cos(math.radians(ps)) + math.sqrt(1 - w * w) * math.sin(math.radians(ps))
    )


def test_ctf_dc_is_plus_amplitude_contrast_and_first_zero():
    one = torch.ones(1, dtype=torch.float64)
    k0 = torch.zeros(1, 2, dtype=torch.float64)
    assert float(
        ctf_2d(k0, 2e4 * one, 2e4 * one, 0 * one, 300 * one, 2.7 * one, 0.1 * one, 0 * one)
    ) == pytest.approx(0.1)  # RELION's sign: CTF(0) = +w, the molecule stays white
    # first zero (Cs = 0, w = 0): π λ Δf s² = π ⇒ s = 1/sqrt(λ Δf)
    lam = float(electron_wavelength_angstrom(300))
    s = 1 / math.sqrt(lam * 2e4)
    k = torch.tensor([[s, 0.0]], dtype=torch.float64)
    val = ctf_2d(k, 2e4 * one, 2e4 * one, 0 * one, 300 * one, 0 * one, 0 * one, 0 * one)
    assert abs(float(val)) < 1e-9


def test_ctf_with_cryodrgn_parameter_file(cryodrgn):
    """Every parameter row of cryoDRGN's test_ctf.pkl evaluated against the reference formula."""
    from cryoforge.sources.pickles import load_cryodrgn_ctf

    arr = load_cryodrgn_ctf(cryodrgn / "test_ctf.pkl")[:50]
    D, px = int(arr[0, 0]), float(arr[0, 1])
    k = rfft_grid_2d(D).reshape(-1, 2).double() / px
    cols = [torch.tensor(arr[:, i]) for i in range(2, 9)]
    got = ctf_2d(k, *cols).numpy()
    for i in range(0, 50, 7):
        ref = _ctf_reference(k[:, 0].numpy(), k[:, 1].numpy(), *arr[i, 2:9])
        assert np.allclose(got[i], ref, atol=1e-10)
