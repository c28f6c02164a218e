"""Gold-standard local refinement: two random halves, each refined against its own half map.

On real particles the full-size reference is mostly noise beyond the resolution the data
support, and a particle compared with a map that holds its own noise aligns to that noise
(the reference then sharpens on noise: overfitting). RELION's auto-refine avoids it by
splitting the particles into two halves that never see each other's map, and by filtering
each half map by what the two halves agree on. The same is done here for the search's local
refinement (option ``gold_standard`` of the search stage):

- the searched particles are split at random (seeded) into two halves;
- each half is refined against its own half map (built from its own particles only);
- each half map is multiplied, shell by shell, by the Fourier shell correlation of the two half
  maps (clipped at 0): the Wiener filter of a half map whose spectral SNR is ``FSC / (1 − FSC)``.
  Frequencies where the halves do not agree then carry no weight in the scores.
"""

from __future__ import annotations

import numpy as np
import torch

from cryoforge.metrics.fsc import fsc, resolution_at
from cryoforge.ops.filters import shell_filter


def half_labels(n: int, seed: int) -> torch.Tensor:
    """``(n,)`` 0/1 labels: a seeded random split into halves of ``n // 2`` and ``n − n // 2``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_907 + 3))
    labels = torch.zeros(n, dtype=torch.long)
    labels[perm[n // 2 :]] = 1
    return labels


def fsc_filtered_halves(
    half1: torch.Tensor, half2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Both ``(L, L, L)`` half maps filtered by their FSC (clipped at 0), and the FSC ``(L//2 + 1,)``.

    The FSC of two half maps estimates each half's spectral SNR as ``FSC / (1 − FSC)``, whose
    Wiener filter ``SNR / (1 + SNR)`` is the FSC itself.
    """
    _, values = fsc(half1, half2)
    weights = torch.from_numpy(np.clip(values, 0.0, 1.0))
    return shell_filter(half1, weights), shell_filter(half2, weights), values


def half_resolution_px(values: np.ndarray, threshold: float = 0.143) -> float:
    """Resolution (px) where the half maps' FSC first drops below ``threshold`` (Nyquist: 2 px)."""
    L = 2 * (len(values) - 1)
    freq = resolution_at(np.arange(len(values)) / L, values, threshold)
    return 1.0 / freq if freq > 0 else float("inf")
