"""Rotations: RELION ZYZ Euler angles, 6D representation, axis-angle, sampling, distances."""

from __future__ import annotations

import math

import torch


def euler_relion_to_matrix(
    rot_deg: torch.Tensor, tilt_deg: torch.Tensor, psi_deg: torch.Tensor
) -> torch.Tensor:
    """RELION's ``Euler_angles2matrix`` (ZYZ): ``(B,)`` angles in degrees → ``(B, 3, 3)``."""
    a, b, g = (
        torch.as_tensor(x, dtype=torch.float64) * (math.pi / 180) for x in (rot_deg, tilt_deg, psi_deg)
    )
    ca, sa, cb, sb, cg, sg = a.cos(), a.sin(), b.cos(), b.sin(), g.cos(), g.sin()
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [
        torch.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1),
        torch.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1),
        torch.stack([sc, ss, cb], -1),
    ]
    return torch.stack(rows, -2)


def matrix_to_euler_relion(R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`euler_relion_to_matrix`: ``(B, 3, 3)`` → (rot, tilt, psi) in degrees.

    Tilt is in [0, 180]; at tilt 0 or 180 (gimbal lock) rot is set to 0.
    """
    R = R.to(torch.float64)
    sb = torch.sqrt(R[..., 0, 2] ** 2 + R[..., 1, 2] ** 2)
    tilt = torch.atan2(sb, R[..., 2, 2])
    regular = sb > 1e-10
    psi = torch.where(
        regular,
        torch.atan2(R[..., 1, 2], -R[..., 0, 2]),
        torch.where(
            R[..., 2, 2] > 0,
            torch.atan2(-R[..., 1, 0], R[..., 0, 0]),
            torch.atan2(R[..., 1, 0], -R[..., 0, 0]),
        ),
    )
    rot = torch.where(regular, torch.atan2(R[..., 2, 1], R[..., 2, 0]), torch.zeros_like(sb))
    deg = 180 / math.pi
    return rot * deg, tilt * deg, psi * deg


def sixd_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """6D representation → rotation by Gram-Schmidt, the two vectors becoming the first two **rows**.

    Parameters
    ----------
    d6
        ``(B, 6)``: ``a1 = d6[:, :3]``, ``a2 = d6[:, 3:]``.
    """
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-2)


def rotvec_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Axis-angle vectors ``(B, 3)`` (angle = norm, radians) → ``(B, 3, 3)`` (Rodrigues)."""
    rotvec = rotvec.to(torch.float64)
    theta = rotvec.norm(dim=-1, keepdim=True)
    axis = rotvec / theta.clamp_min(1e-12)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack(
        [torch.stack([zero, -z, y], -1), torch.stack([z, zero, -x], -1), torch.stack([-y, x, zero], -1)], -2
    )
    t = theta.unsqueeze(-1)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand_as(K)
    return eye + torch.sin(t) * K + (1 - torch.cos(t)) * (K @ K)


def matrix_to_rotvec(R: torch.Tensor) -> torch.Tensor:
    """``(B, 3, 3)`` → axis-angle ``(B, 3)`` (radians), via quaternions for numerical stability."""
    q = matrix_to_quaternion(R.to(torch.float64))
    q = torch.where(q[..., :1] < 0, -q, q)
    w, v = q[..., 0], q[..., 1:]
    n = v.norm(dim=-1)
    angle = 2 * torch.atan2(n, w)
    scale = torch.where(n > 1e-12, angle / n.clamp_min(1e-12), torch.full_like(n, 2.0))
    return v * scale.unsqueeze(-1)


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """``(B, 3, 3)`` → unit quaternions ``(B, 4)`` as (w, x, y, z)."""
    m = R
    t = torch.stack(
        [
            1 + m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2],
            1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
            1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
            1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2],
        ],
        -1,
    )
    best = t.argmax(-1)
    cands = torch.stack(
        [
            torch.stack(
                [
                    t[..., 0],
                    m[..., 2, 1] - m[..., 1, 2],
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 1, 0] - m[..., 0, 1],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 2, 1] - m[..., 1, 2],
                    t[..., 1],
                    m[..., 1, 0] + m[..., 0, 1],
                    m[..., 0, 2] + m[..., 2, 0],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 1, 0] + m[..., 0, 1],
                    t[..., 2],
                    m[..., 2, 1] + m[..., 1, 2],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 1, 0] - m[..., 0, 1],
                    m[..., 0, 2] + m[..., 2, 0],
                    m[..., 2, 1] + m[..., 1, 2],
                    t[..., 3],
                ],
                -1,
            ),
        ],
        -2,
    )
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    return torch.nn.functional.normalize(q, dim=-1)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Quaternions ``(B, 4)`` (w, x, y, z), any norm → ``(B, 3, 3)``."""
    q = torch.nn.functional.normalize(q, dim=-1)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def random_rotations(
    n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``(n, 3, 3)`` rotations uniform on SO(3) (Haar), from normalised 4D Gaussian quaternions."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    return quaternion_to_matrix(q).to(dtype)


def geodesic_distance_deg(R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """Angle of ``R1ᵀ R2`` in degrees, ``(B,)``."""
    tr = (R1.transpose(-1, -2).to(torch.float64) @ R2.to(torch.float64)).diagonal(dim1=-2, dim2=-1).sum(-1)
    return torch.rad2deg(torch.arccos(((tr - 1) / 2).clamp(-1, 1)))


FLIP_Z = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
ROT_PI_Z = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64))


def rotate_pose_pi(rotation: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pose of an image rotated by π about the box centre: ``diag(-1,-1,1)·R`` and ``-t``."""
    return ROT_PI_Z.to(rotation) @ rotation, -shift


def mirror_poses(rotation: torch.Tensor) -> torch.Tensor:
    """Poses of the mirror-image map ``V(Jx)``, ``J = diag(1,1,-1)``: ``J R J``.

    The projections of the mirrored map at ``R`` equal those of the original at ``J R J``.
    """
    J = FLIP_Z.to(rotation)
    return J @ rotation @ J


def align_rotations(pred: torch.Tensor, true: torch.Tensor) -> tuple[torch.Tensor, bool, torch.Tensor]:
    """Best global alignment ``true ≈ pred' · A`` over both hands (orthogonal Procrustes).

    ``pred'`` is ``pred`` (same hand) or :func:`mirror_poses` of it (other hand).

    Returns
    -------
    A
        ``(3, 3)`` rotation.
    mirrored
        Whether the other hand matched better.
    aligned
        ``(B, 3, 3)`` aligned predictions ``pred' · A``.
    """
    best = None
    for mirrored in (False, True):
        p = (mirror_poses(pred) if mirrored else pred).to(torch.float64)
        t = true.to(torch.float64)
        M = (p.transpose(-1, -2) @ t).sum(0)
        U, _, Vt = torch.linalg.svd(M)
        d = torch.sign(torch.linalg.det(U @ Vt))
        A = U @ torch.diag(torch.stack([torch.ones_like(d), torch.ones_like(d), d])) @ Vt
        aligned = p @ A
        err = (aligned - t).pow(2).sum((-1, -2)).median()
        if best is None or err < best[0]:
            best = (err, A, mirrored, aligned)
    assert best is not None
    return best[1], best[2], best[3]


def grid_symmetry_pose(
    A_xy: tuple[tuple[int, int], tuple[int, int]], rotation: torch.Tensor, shift: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pose of an image moved by the pixel-grid symmetry ``A`` (see ``apply_grid_symmetry``).

    ``P_R(A⁻¹u) = P_{B R}(u)`` with ``B = [[A, 0], [0, det A]]``: an in-plane rotation turns the
    view about z, and a mirror image is the projection seen from the other side (z → −z), so ``B``
    is always a proper rotation. The shift becomes ``A t``.

    Parameters
    ----------
    rotation
        ``(..., 3, 3)`` rotations of the original images.
    shift
        ``(..., 2)`` shifts ``(x, y)``, any unit.
    """
    A = torch.tensor(A_xy, dtype=rotation.dtype, device=rotation.device)
    B = torch.eye(3, dtype=rotation.dtype, device=rotation.device)
    B[:2, :2] = A
    B[2, 2] = torch.linalg.det(A).round()
    return B @ rotation, shift @ A.to(shift.dtype).T


def project_to_rotation(M: torch.Tensor) -> torch.Tensor:
    """Nearest rotation (Frobenius norm) to each ``(..., 3, 3)`` matrix: ``U diag(1, 1, det UVᵀ) Vᵀ``."""
    U, _, Vh = torch.linalg.svd(M.to(torch.float64))
    d = torch.linalg.det(U @ Vh)
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    return (U @ D @ Vh).to(M.dtype)


def consensus_rotations(
    candidates: torch.Tensor, anchor: torch.Tensor, max_deg: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chordal mean of the candidates within ``max_deg`` of the anchor, per particle.

    Parameters
    ----------
    candidates
        ``(V, B, 3, 3)``: ``V`` estimates of each of ``B`` rotations.
    anchor
        ``(B, 3, 3)``: the estimate the others must agree with; it is always in its own mean.
    max_deg
        Candidates further than this geodesic angle from the anchor are left out.

    Returns
    -------
    rotation
        ``(B, 3, 3)`` nearest rotation to the mean of the agreeing matrices
        (:func:`project_to_rotation`).
    agree
        ``(V, B)`` bool: which candidates were averaged.
    """
    V, B = candidates.shape[:2]
    dist = geodesic_distance_deg(anchor.expand(V, B, 3, 3).reshape(-1, 3, 3), candidates.reshape(-1, 3, 3))
    agree = dist.reshape(V, B) <= max_deg
    w = agree.to(candidates.dtype)[..., None, None]
    total = (w * candidates).sum(0) + anchor
    return project_to_rotation(total), agree
