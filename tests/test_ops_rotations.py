"""Rotations against RELION's definitions and cryoDRGN's / cryoSPARC's stored matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoforge.ops.rotations import (
    align_rotations,
    euler_relion_to_matrix,
    geodesic_distance_deg,
    matrix_to_euler_relion,
    matrix_to_rotvec,
    mirror_poses,
    random_rotations,
    rotvec_to_matrix,
    sixd_to_matrix,
)


def test_euler_zyz_elementary_rotations():
    # rot only: a rotation about z; RELION's matrix for (rot, 0, 0) is Rz(-rot) in the active sense
    R = euler_relion_to_matrix(torch.tensor([90.0]), torch.tensor([0.0]), torch.tensor([0.0]))[0]
    assert torch.allclose(
        R, torch.tensor([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]], dtype=torch.float64), atol=1e-12
    )
    R = euler_relion_to_matrix(torch.tensor([0.0]), torch.tensor([90.0]), torch.tensor([0.0]))[0]
    assert torch.allclose(
        R, torch.tensor([[0.0, 0, -1], [0, 1, 0], [1, 0, 0]], dtype=torch.float64), atol=1e-12
    )


def test_euler_roundtrip_angles_and_matrices():
    g = torch.Generator().manual_seed(0)
    rot = torch.rand(500, generator=g, dtype=torch.float64) * 360 - 180
    tilt = torch.rand(500, generator=g, dtype=torch.float64) * 178 + 1
    psi = torch.rand(500, generator=g, dtype=torch.float64) * 360 - 180
    R = euler_relion_to_matrix(rot, tilt, psi)
    r2, t2, p2 = matrix_to_euler_relion(R)
    assert torch.allclose(r2, rot, atol=1e-9) and torch.allclose(t2, tilt, atol=1e-9)
    assert torch.allclose(p2, psi, atol=1e-9)
    Rr = random_rotations(200, g, torch.float64)
    assert torch.allclose(euler_relion_to_matrix(*matrix_to_euler_relion(Rr)), Rr, atol=1e-10)
    # gimbal lock: tilt 0 and 180
    for tilt0 in (0.0, 180.0):
        R0 = euler_relion_to_matrix(torch.tensor([30.0]), torch.tensor([tilt0]), torch.tensor([20.0]))
        assert torch.allclose(euler_relion_to_matrix(*matrix_to_euler_relion(R0)), R0, atol=1e-10)


def test_relion_star_matrices_equal_cryodrgn(cryodrgn):
    """Angles from the RELION 3.0 star give cryoDRGN's stored matrices to ~1e-15."""
    import starfile

    from cryoforge.sources.pickles import load_array_pickle

    df = starfile.read(cryodrgn / "FinalRefinement-OriginalParticles-PfCRT.star")
    R = euler_relion_to_matrix(
        torch.tensor(df["rlnAngleRot"].to_numpy(), dtype=torch.float64),
        torch.tensor(df["rlnAngleTilt"].to_numpy(), dtype=torch.float64),
        torch.tensor(df["rlnAnglePsi"].to_numpy(), dtype=torch.float64),
    )
    rot, _ = load_array_pickle(cryodrgn / "expected" / "pose_star.pkl")
    assert np.abs(R.numpy() - rot).max() < 1e-12


def test_cryosparc_rotvec_is_transpose(cryodrgn):
    from cryoforge.sources.pickles import load_array_pickle

    arr = np.load(cryodrgn / "cryosparc_P12_J24_001_particles.cs")
    R = rotvec_to_matrix(torch.tensor(np.array(arr["alignments3D/pose"], dtype=np.float64))).transpose(-1, -2)
    rot, _ = load_array_pickle(cryodrgn / "expected" / "pose_cs.pkl")
    assert np.abs(R.numpy() - rot).max() < 2e-6


def test_rotvec_roundtrip():
    R = random_rotations(300, torch.Generator().manual_seed(2), torch.float64)
    assert torch.allclose(rotvec_to_matrix(matrix_to_rotvec(R)), R, atol=1e-9)


def test_sixd_gram_schmidt_rows():
    d6 = torch.randn(50, 6, dtype=torch.float64)
    R = sixd_to_matrix(d6)
    assert torch.allclose(
        R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(50, 3, 3), atol=1e-12
    )
    assert torch.allclose(torch.linalg.det(R), torch.ones(50, dtype=torch.float64))
    a1 = d6[:, :3] / d6[:, :3].norm(dim=1, keepdim=True)
    assert torch.allclose(R[:, 0], a1)  # first row = normalised first vector
    # the second row lies in span(a1, a2)
    n = torch.linalg.cross(d6[:, :3], d6[:, 3:], dim=1)
    assert torch.allclose((R[:, 1] * n).sum(1), torch.zeros(50, dtype=torch.float64), atol=1e-10)


def test_random_rotations_are_uniform():
    R = random_rotations(20000, torch.Generator().manual_seed(0), torch.float64)
    # Haar measure: E[R] = 0 and the angle density is (1 - cos θ)/π ⇒ E[θ] = π/2 + 2/π
    assert R.mean(0).abs().max() < 0.02
    ang = torch.deg2rad(geodesic_distance_deg(R, torch.eye(3, dtype=torch.float64).expand_as(R)))
    assert float(ang.mean()) == pytest.approx(np.pi / 2 + 2 / np.pi, abs=0.02)


def test_align_rotations_recovers_global_rotation_and_hand():
    g = torch.Generator().manual_seed(5)
    true = random_rotations(100, g, torch.float64)
    A = random_rotations(1, g, torch.float64)[0]
    pred = true @ A.T  # true = pred · A
    _, mirrored, aligned = align_rotations(pred, true)
    assert not mirrored and torch.allclose(aligned, true, atol=1e-8)
    pred_m = mirror_poses(true @ A.T)  # the other hand
    _, mirrored, aligned = align_rotations(pred_m, true)
    assert mirrored and torch.allclose(aligned, true, atol=1e-8)
    assert geodesic_distance_deg(aligned, true).max() < 1e-4
