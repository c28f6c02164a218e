"""Thon rings: does the CTF in the metadata match the rings in the particles' power spectra?

A particle image is the projection times the CTF plus noise, so the power spectrum pooled over
the particles of one micrograph carries the CTF's zeros as rings (Thon rings), whatever the
poses. Comparing the radial profile of that pooled spectrum with ``CTF²`` at the metadata's
defocus, scaled by a factor ``k``, tells whether the defocus is right (best ``k`` ≈ 1) without a
map or a pose. CTFFIND fits the rings of the whole micrograph; here only the particles' boxes are
left, which is what a particle stack carries.

The comparison is of *ring patterns*: the log radial power and the model's ``CTF²`` each minus
their running mean over :data:`DETREND_SHELLS` shells, scored by their Pearson correlation over
the shells where the candidate's rings are resolved (at least :data:`SHELLS_PER_RING` shells from
one zero to the next; finer rings alias in the box). A correlation counts only when it beats what
the same scan gives on the profile's own shells in random order (a permutation null).

Physics functions only (numpy, and the CTF of :mod:`cryoforge.ops.ctf`);
:mod:`cryoforge.engine.ctf_check` reads the particles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cryoforge.ops.ctf import ctf_2d, electron_wavelength_angstrom

DETREND_SHELLS = 7
"""Width (shells) of the running mean removed from both profiles: slower than the rings."""
SHELLS_PER_RING = 2.5
"""Fewest shells between two CTF zeros for a ring to count as resolved by the box."""
MIN_SHELLS = 12
"""Fewest resolved shells a candidate defocus must have to be scored."""
LOW_RESOLUTION_ANGSTROM = 50.0
"""Shells below this frequency (the particle's own shape) are left out."""


def radial_power(images: np.ndarray) -> np.ndarray:
    """Mean power spectrum of images, averaged over rings of integer radius.

    Parameters
    ----------
    images
        ``(N, L, L)`` real images (each has its mean removed here).

    Returns
    -------
    ``(L // 2,)`` mean ``|F|²`` per shell ``0 … L/2 − 1`` (shell = rounded radius in Fourier px).
    """
    L = images.shape[-1]
    x = images - images.mean(axis=(-2, -1), keepdims=True)
    power = (np.abs(np.fft.fft2(x)) ** 2).mean(0)
    f = np.fft.fftfreq(L) * L
    shell = np.rint(np.hypot(*np.meshgrid(f, f, indexing="ij"))).astype(int).ravel()
    sums = np.bincount(shell, power.ravel(), minlength=L)[: L // 2]
    counts = np.bincount(shell, minlength=L)[: L // 2]
    return sums / np.maximum(counts, 1)


def ctf_squared_radial(
    freq_per_angstrom: np.ndarray,
    defocus_angstrom: np.ndarray,
    voltage_kv: float,
    cs_mm: float,
    amplitude_contrast: float,
    phase_shift_deg: float = 0.0,
) -> np.ndarray:
    """``CTF²`` at radial frequencies for several defoci (no astigmatism): the CTF of
    :func:`cryoforge.ops.ctf.ctf_2d` along one direction, squared.

    Parameters
    ----------
    freq_per_angstrom
        ``(S,)`` spatial frequencies ``s`` in Å⁻¹.
    defocus_angstrom
        ``(D,)`` defoci in Å (positive: underfocus).
    voltage_kv, cs_mm, amplitude_contrast, phase_shift_deg
        Microscope and phase plate (units in the names).

    Returns
    -------
    ``(D, S)`` values of ``CTF²``.
    """
    s = torch.as_tensor(np.asarray(freq_per_angstrom, np.float64))
    freqs = torch.stack([s, torch.zeros_like(s)], -1)
    df = torch.as_tensor(np.asarray(defocus_angstrom, np.float64))

    def each(value: float) -> torch.Tensor:
        return torch.full_like(df, float(value))

    ctf = ctf_2d(
        freqs,
        df,
        df,
        each(0.0),
        each(voltage_kv),
        each(cs_mm),
        each(amplitude_contrast),
        each(phase_shift_deg),
    )
    return (ctf**2).numpy()


def ring_pattern(profile: np.ndarray) -> np.ndarray:
    """``profile`` minus its running mean over :data:`DETREND_SHELLS` shells (edges padded)."""
    h = DETREND_SHELLS // 2
    padded = np.pad(profile, [(0, 0)] * (profile.ndim - 1) + [(h, h)], mode="edge")
    kernel = np.ones(DETREND_SHELLS) / DETREND_SHELLS
    smooth = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="valid"), -1, padded)
    return profile - smooth


def resolved_shells(box: int, pixel_angstrom: float, defocus_angstrom: float, voltage_kv: float) -> int:
    """The last shell (exclusive) where rings of ``defocus_angstrom`` are at least
    :data:`SHELLS_PER_RING` shells apart: zeros are ``Δs = 1 / (2 λ Δf s)`` apart."""
    lam = float(electron_wavelength_angstrom(voltage_kv))
    side = box * pixel_angstrom
    last = side**2 / (2 * SHELLS_PER_RING * lam * max(defocus_angstrom, 1.0))
    return int(min(box // 2, math.floor(last)))


def _pattern_correlation(y: np.ndarray, model: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Pearson correlation of ``y[..., lo:hi]`` with the centred, unit-norm ``model`` ``(hi − lo,)``."""
    y = y[..., lo:hi] - y[..., lo:hi].mean(-1, keepdims=True)
    return (y @ model) / (np.linalg.norm(y, axis=-1) + 1e-30)


@dataclass
class RingFit:
    """How well ``CTF²`` at the metadata's defocus × ``k`` explains one group's rings.

    Attributes
    ----------
    scales
        ``(K,)`` the factors ``k`` tried.
    correlation
        ``(K,)`` ring-pattern correlation at each ``k`` (NaN where fewer than
        :data:`MIN_SHELLS` shells resolve its rings).
    best_scale
        ``k`` of the highest correlation (NaN when none could be scored).
    best_correlation
        That correlation.
    at_metadata
        The correlation at ``k = 1`` (NaN when the metadata's rings are too fine for the box).
    null_threshold
        The 99th percentile of the best correlation that the same scan finds on the profile's
        ring pattern with its shells shuffled: ``best_correlation`` above it is a detection.
    """

    scales: np.ndarray
    correlation: np.ndarray
    best_scale: float
    best_correlation: float
    at_metadata: float
    null_threshold: float

    @property
    def detected(self) -> bool:
        return bool(np.isfinite(self.best_correlation) and self.best_correlation > self.null_threshold)


def default_scales() -> np.ndarray:
    """Factors ``k`` tried: 0.1 to 10, 1 % apart (log-spaced), 1 included."""
    return np.exp(np.linspace(math.log(0.1), math.log(10.0), 464))


def fit_defocus_scale(
    power: np.ndarray,
    box: int,
    pixel_angstrom: float,
    defocus_angstrom: np.ndarray,
    voltage_kv: float,
    cs_mm: float,
    amplitude_contrast: float,
    phase_shift_deg: float = 0.0,
    scales: np.ndarray | None = None,
    permutations: int = 200,
    seed: int = 0,
) -> RingFit:
    """Scan ``k``: the pooled spectrum's rings against the mean ``CTF²`` of the group at ``k·Δf``.

    Parameters
    ----------
    power
        ``(L // 2,)`` pooled radial power of the group's particles (:func:`radial_power`).
    box, pixel_angstrom
        Image size (px) and pixel size (Å) of those images.
    defocus_angstrom
        ``(N,)`` each particle's mean defocus ``(U + V) / 2`` from the metadata, in Å; the model
        of the pooled spectrum is the mean of their ``CTF²``.
    voltage_kv, cs_mm, amplitude_contrast, phase_shift_deg
        The group's optics.
    scales
        Factors ``k`` (default :func:`default_scales`).
    permutations, seed
        Shuffles of the profile's shells for the null threshold.

    Returns
    -------
    RingFit
    """
    scales = default_scales() if scales is None else np.asarray(scales, np.float64)
    s = np.arange(box // 2) / (box * pixel_angstrom)
    lo = max(2, math.ceil(box * pixel_angstrom / LOW_RESOLUTION_ANGSTROM))
    data = ring_pattern(np.log(np.maximum(power, 1e-30)))
    defoci = np.asarray(defocus_angstrom, np.float64)
    # a few representative defoci stand for the group (the mean CTF² changes slowly with them)
    rep = np.quantile(defoci, np.linspace(0, 1, min(len(defoci), 9)))
    rng = np.random.default_rng(seed)
    shuffled = data[np.stack([rng.permutation(box // 2) for _ in range(permutations)])]
    corr = np.full(len(scales), np.nan)
    null_best = np.full(permutations, -np.inf)
    for i, k in enumerate(scales):
        hi = resolved_shells(box, pixel_angstrom, k * float(rep.max()), voltage_kv)
        if hi - lo < MIN_SHELLS:
            continue
        model = ring_pattern(
            ctf_squared_radial(s, k * rep, voltage_kv, cs_mm, amplitude_contrast, phase_shift_deg).mean(0)
        )
        m = model[lo:hi] - model[lo:hi].mean()
        m /= np.linalg.norm(m) + 1e-30
        corr[i] = _pattern_correlation(data, m, lo, hi)
        null_best = np.maximum(null_best, _pattern_correlation(shuffled, m, lo, hi))
    ok = np.isfinite(corr)
    if not ok.any():
        nan = float("nan")
        return RingFit(scales, corr, nan, nan, nan, nan)
    b = int(np.nanargmax(corr))
    one = int(np.argmin(np.abs(np.log(scales))))
    return RingFit(
        scales,
        corr,
        float(scales[b]),
        float(corr[b]),
        float(corr[one]),
        float(np.quantile(null_best, 0.99)),
    )
