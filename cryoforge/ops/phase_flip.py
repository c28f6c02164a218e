"""CTF phase flipping: each image's spectrum times the sign of its CTF.

A standard correction before looking at (or classifying) particles: it undoes the CTF's contrast
reversals between its zeros but not its amplitude, so white noise stays white. A phase-flipped
image looks like the projection blurred by ``|CTF|``, the same for every defocus, where the raw
image's rings depend on each particle's defocus.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cryoforge.ops.fft import irfft2_images, rfft2_images
from cryoforge.ops.grids import half_plane_query


def phase_flipped_images(
    images: torch.Tensor, ctf_at: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``(B, L, L)`` images with their spectrum multiplied by ``sign(CTF)``.

    Parameters
    ----------
    images
        ``(B, L, L)`` real images, centre at ``(L//2, L//2)``.
    ctf_at
        Maps ``(M, 2)`` frequencies ``(kx, ky)`` in cycles/px (the rfft2 half-plane strictly inside
        Nyquist, :func:`~cryoforge.ops.grids.half_plane_query`) to ``(B, M)`` each image's CTF there.

    Returns
    -------
    ``(B, L, L)`` real images, same dtype. Frequencies at and beyond Nyquist (the spectrum's
    corners and edges) are set to zero; the CTF's zeros flip to ``+1`` (``sign(0) = 0`` would
    remove them).
    """
    L = images.shape[-1]
    flat, freqs = half_plane_query(L, images.device)
    spec = rfft2_images(images.float()).reshape(len(images), -1)
    sign = torch.where(ctf_at(freqs) < 0, -1.0, 1.0).to(spec.real.dtype)
    out = torch.zeros_like(spec)
    out[:, flat] = spec[:, flat] * sign
    return irfft2_images(out.reshape(len(images), L, L // 2 + 1), L).to(images.dtype)
