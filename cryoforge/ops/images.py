"""Real-space image operations about the box centre ``(L//2, L//2)``."""

from __future__ import annotations

import torch


def rotate_pi(images: torch.Tensor) -> torch.Tensor:
    """Rotate ``(..., L, L)`` images by π about pixel ``(L//2, L//2)``.

    Pixel ``i`` goes to ``2·(L//2) − i``: a flip for odd L, a flip plus a one-pixel roll for even
    L (the row/column 0 then maps onto itself). The pose of the rotated image is
    ``diag(-1, -1, 1) · R`` with shift ``-t`` (:func:`cryoforge.ops.rotations.rotate_pose_pi`).
    """
    out = torch.flip(images, dims=(-2, -1))
    if images.shape[-1] % 2 == 0:
        out = torch.roll(out, shifts=(1, 1), dims=(-2, -1))
    return out


GRID_SYMMETRIES_XY: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "identity": ((1, 0), (0, 1)),
    "rot90": ((0, -1), (1, 0)),  # (x, y) → (−y, x): counter-clockwise with y up
    "rot180": ((-1, 0), (0, -1)),
    "rot270": ((0, 1), (-1, 0)),
    "flip_x": ((-1, 0), (0, 1)),  # x → −x
    "flip_y": ((1, 0), (0, -1)),
    "transpose": ((0, 1), (1, 0)),  # x ↔ y
    "antitranspose": ((0, -1), (-1, 0)),
}
"""The 8 symmetries of the square pixel grid (the dihedral group D4) as integer ``2×2`` matrices
acting on ``(x, y)`` pixel offsets from the box centre. Each maps pixels onto pixels exactly: no
interpolation."""


def apply_grid_symmetry(images: torch.Tensor, A_xy: tuple[tuple[int, int], tuple[int, int]]) -> torch.Tensor:
    """Images moved by the grid symmetry ``A`` about pixel ``(L//2, L//2)``: ``out(u) = in(A⁻¹u)``.

    ``u = (x, y)`` is the pixel offset from the centre, ``x`` along the last axis. Offsets wrap
    modulo ``L``: for even L the edge row/column ``−L/2`` maps onto itself, as in :func:`rotate_pi`.

    Parameters
    ----------
    images
        ``(..., L, L)`` images ``[y, x]``.
    A_xy
        One of :data:`GRID_SYMMETRIES_XY`.

    Returns
    -------
    ``(..., L, L)`` moved images. The pose of the moved image follows
    :func:`cryoforge.ops.rotations.grid_symmetry_pose`.
    """
    L = images.shape[-1]
    c = L // 2
    u = torch.arange(L, device=images.device) - c
    y, x = torch.meshgrid(u, u, indexing="ij")
    (a, b), (d, e) = A_xy  # A⁻¹ = Aᵀ for these orthogonal integer matrices
    src_x = (a * x + d * y + c) % L
    src_y = (b * x + e * y + c) % L
    return images[..., src_y, src_x]
