"""The final map of a half-set run: the two half maps averaged and weighted by what they agree on.

RELION's post-processing (and cryoSPARC's) does not publish the plain average of the half maps:
its shells beyond the resolution are noise. Each shell of the average is weighted by the
correlation it is expected to have with the true map, ``C_ref = sqrt(2 FSC / (1 + FSC))``
(Rosenthal & Henderson 2003, J. Mol. Biol. 333, eq. 5; ``FSC`` that of the two half maps, whose
average carries twice each half's signal-to-noise ratio), and the map is low-passed at the
FSC-0.143 resolution (the shells beyond carry no weight). No sharpening is applied.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cryoforge.metrics.fsc import find_crossing
from cryoforge.ops.filters import raised_cosine_shells, shell_filter

RESOLUTION_THRESHOLD = 0.143


def cref_weights(fsc_values: np.ndarray) -> np.ndarray:
    """``(n,)`` per-shell ``C_ref = sqrt(2 F / (1 + F))`` of a half-map FSC ``F`` ``(n,)``, with
    ``F`` clipped to ``[0, 1]`` (a negative FSC carries no signal); shell 0 (the mean) gets 1."""
    f = np.clip(np.asarray(fsc_values, dtype=float), 0.0, 1.0)
    w = np.sqrt(2.0 * f / (1.0 + f))
    if len(w):
        w[0] = 1.0
    return w


def fsc_weights(fsc_values: np.ndarray) -> np.ndarray:
    """``(n,)`` shell weights of the final map: :func:`cref_weights` up to the FSC-0.143 crossing
    (in Fourier px, ``crossing × L``), a raised-cosine fall to 0 over the next Fourier pixel, 0
    beyond. A curve that stays above 0.143 to Nyquist is not low-passed; one below it from shell
    1 keeps only the mean."""
    values = np.asarray(fsc_values, dtype=float)
    values = np.where(np.isfinite(values), values, 0.0)  # a non-finite shell carries no weight
    return cref_weights(values) * raised_cosine_shells(len(values), lowpass_shell(values)).numpy()


def lowpass_shell(fsc_values: np.ndarray) -> float:
    """The shell (Fourier px, fractional) where :func:`fsc_weights` starts its low-pass edge: the
    FSC-0.143 crossing; ``inf`` for a curve above 0.143 to Nyquist, 0 for one below it from shell
    1 (only the mean is kept). Non-finite values count as 0."""
    values = np.asarray(fsc_values, dtype=float)
    values = np.where(np.isfinite(values), values, 0.0)
    L = 2 * (len(values) - 1)
    crossing = find_crossing(np.arange(len(values)) / max(L, 1), values, RESOLUTION_THRESHOLD)
    if crossing.bound == "nyquist":
        return math.inf
    if crossing.bound == "not_reached":
        return 0.0
    return crossing.freq_per_px * L


def fsc_weighted_average(half1: torch.Tensor, half2: torch.Tensor, fsc_values: np.ndarray) -> torch.Tensor:
    """The final map ``(L, L, L)``: ``(half1 + half2) / 2`` with every Fourier shell multiplied by
    :func:`fsc_weights` of the half maps' FSC ``fsc_values`` ``(L//2 + 1,)`` (shells of
    :func:`cryoforge.metrics.fsc.fsc`; the cube's corners beyond Nyquist get 0). Same units and
    grid as the half maps (half 2 already aligned onto half 1), float32."""
    average = (half1.float() + half2.float()) / 2
    return shell_filter(average, torch.from_numpy(fsc_weights(fsc_values))).float()
