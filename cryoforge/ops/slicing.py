"""Central slices (Fourier slice theorem)."""

from __future__ import annotations

import torch


def central_slice_coords(rotation: torch.Tensor, freqs_2d: torch.Tensor) -> torch.Tensor:
    """3D frequencies of the central slice for each pose.

    The slice of image frequency ``k2 = (kx, ky)`` is the volume at ``k3 = Rᵀ (kx, ky, 0)``.

    Parameters
    ----------
    rotation
        ``(B, 3, 3)`` rotation matrices.
    freqs_2d
        ``(N, 2)`` image frequencies ``(kx, ky)`` in cycles/pixel.

    Returns
    -------
    ``(B, N, 3)`` volume frequencies ``(kx, ky, kz)`` in cycles/pixel.
    """
    # Row vectors: k3ᵀ = k2ᵀ R  ⇔  k3 = Rᵀ k2 ; with kz = 0 only the first two rows of R matter.
    return freqs_2d.to(rotation.dtype) @ rotation[..., :2, :]
