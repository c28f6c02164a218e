"""Helpers every volume representation can use (export to a real-space map)."""

from __future__ import annotations

import torch

from cryoforge.ops.fft import fourier_to_volume
from cryoforge.ops.grids import centered_grid_3d, nyquist_mask
from cryoforge.roles import Volume


@torch.no_grad()
def volume_to_map(volume: Volume, L: int, chunk: int = 65536) -> torch.Tensor:
    """Evaluate a Fourier volume on the full ``L³`` grid (inside Nyquist) → real map ``[z, y, x]``."""
    device = next(volume.parameters(), torch.empty(0)).device
    grid = centered_grid_3d(L, device).reshape(-1, 3)
    mask = nyquist_mask(grid)
    values = torch.zeros(L**3, dtype=torch.complex64, device=device)
    pts = grid[mask]
    out = [volume(pts[i : i + chunk]).to(torch.complex64) for i in range(0, len(pts), chunk)]
    values[mask] = torch.cat(out) if out else values[mask]
    return fourier_to_volume(values.reshape(L, L, L)).float().cpu()


def density_is_mostly_negative(vmap: torch.Tensor) -> bool:
    """Whether a real-space map's strongest density is negative (inverted contrast).

    A molecule in RELION's convention is white: its map has a long positive tail. The test compares
    the tails: the 0.1 % quantile below the median against the 99.9 % quantile above it.

    Parameters
    ----------
    vmap
        ``(L, L, L)`` map.
    """
    v = vmap.double().flatten()
    v = v - v.median()
    lo, hi = torch.quantile(v, torch.tensor([0.001, 0.999], dtype=torch.float64))
    return bool(-lo > hi)


CONTRAST_HINT = (
    "the learned map's density is mostly negative: the particles look dark; "
    "rerun with -o source.invert_contrast true"
)
