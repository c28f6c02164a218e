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
