"""Coloured noise for simulated particles: a radial power spectrum in Å⁻¹, measured on real
particles' background or given by a parametric fall-off, and Gaussian noise with that spectrum.

A spectrum is a function of the spatial frequency ``s`` in Å⁻¹, so one measured at one pixel size
applies at another: on a grid finer than the source's, frequencies beyond the source's Nyquist
get its last value (the spectrum is held flat there); below its first shell, the first value.
Only the shape matters: the simulator scales the noise to the requested SNR.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryoforge.errors import InputFileError

#: particles read from a ``--noise-like`` table at most (evenly spaced over the table)
NOISE_LIKE_MAX_PARTICLES = 2000

#: RELION's default background radius (``relion_preprocess --bg_radius``): this fraction of the box side
DEFAULT_MASK_RADIUS_FRACTION = 0.375


@dataclass(frozen=True)
class NoiseSpectrum:
    """A radial noise power spectrum: ``power[i]`` at ``freq_per_angstrom[i]`` (increasing).

    ``source`` says where it came from (a file and its mask, or the fall-off's formula).
    """

    freq_per_angstrom: np.ndarray
    power: np.ndarray
    source: str

    def power_at(self, s_per_angstrom: np.ndarray) -> np.ndarray:
        """The spectrum at ``s`` (Å⁻¹), linear between shells, held at its ends beyond them."""
        return np.interp(s_per_angstrom, self.freq_per_angstrom, self.power)

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "freq_per_angstrom": [float(v) for v in self.freq_per_angstrom],
            "power": [float(v) for v in self.power],
        }


def falloff_spectrum(falloff_angstrom: float, pixel_size_angstrom: float) -> NoiseSpectrum:
    """``power(s) = 1 / (1 + (s·D0)²)``, ``D0 = falloff_angstrom`` (the power halves at ``s = 1/D0``),
    tabulated finely enough up to a Nyquist of ``pixel_size_angstrom`` for linear interpolation to
    be exact to 1e-4."""
    nyquist = 0.5 / pixel_size_angstrom
    s = np.linspace(0.0, nyquist, 4097)
    return NoiseSpectrum(s, 1.0 / (1.0 + (s * falloff_angstrom) ** 2), f"1/(1+(s·{falloff_angstrom:g} Å)²)")


def radial_shells(box: int) -> np.ndarray:
    """``(L, L//2 + 1)`` shell index ``round(|k|·L)`` of each ``rfft2`` coefficient (k in cycles/px)."""
    ky = np.fft.fftfreq(box)[:, None]
    kx = np.fft.rfftfreq(box)[None, :]
    return np.rint(np.sqrt(kx * kx + ky * ky) * box).astype(np.int64)


def measure_noise_spectrum(
    star_path: str | Path,
    mask_radius_angstrom: float | None = None,
    max_particles: int | None = None,
) -> NoiseSpectrum:
    """The radial power of the background of the particles of ``star_path`` (a RELION star).

    Up to ``max_particles`` (default :data:`NOISE_LIKE_MAX_PARTICLES`) images, evenly spaced over
    the table, are read. The background is every pixel farther than ``mask_radius_angstrom``
    from the box centre (default: :data:`DEFAULT_MASK_RADIUS_FRACTION` of the box side,
    RELION's background radius).
    Each image's background, less its mean, is Fourier transformed (orthonormal) and its power
    divided by the background's share of the box; the power is averaged over images and over
    shells one Fourier pixel wide up to Nyquist. Shell 0 (the mean, removed) takes shell 1's
    value. Masking blurs the spectrum by about ``1 / (background width)``: fine features are
    smoothed, the overall colour is kept.

    Raises
    ------
    InputFileError
        Naming the file: not a star, no pixel size, a mask that leaves no background.
    """
    from cryoforge.io.mrc import map_stack, stack_info
    from cryoforge.io.star import read_star
    from cryoforge.io.table import parse_image_name

    star_path = Path(star_path)
    if star_path.suffix.lower() != ".star":
        raise InputFileError(star_path, "expected a RELION .star file of particles", "--noise-like")
    table = read_star(star_path)
    if table.image_names is None:
        raise InputFileError(star_path, "no images to measure the noise on", "rlnImageName")
    px = table.pixel_size_angstrom
    if px is None:
        raise InputFileError(star_path, "the table states no pixel size", "rlnImagePixelSize")
    n = len(table)
    most = NOISE_LIKE_MAX_PARTICLES if max_particles is None else max_particles
    rows = np.unique(np.linspace(0, n - 1, min(n, most)).round().astype(np.int64))
    stacks: dict[str, np.ndarray] = {}
    images = []
    for i in rows:
        index, name = parse_image_name(str(table.image_names[i]))
        if name not in stacks:
            stacks[name] = map_stack(stack_info(_find_stack(star_path, name)))
        images.append(np.asarray(stacks[name][index], dtype=np.float64))
    stack = np.stack(images)
    box = stack.shape[-1]
    radius_px = (mask_radius_angstrom / px) if mask_radius_angstrom else DEFAULT_MASK_RADIUS_FRACTION * box
    r = np.arange(box) - box // 2
    outside = (r[:, None] ** 2 + r[None, :] ** 2) > radius_px**2
    if outside.sum() < 0.05 * box * box:
        raise InputFileError(
            star_path,
            f"a mask of radius {radius_px * px:.4g} Å leaves {int(outside.sum())} background pixels of "
            f"{box}²; give a smaller --noise-mask-radius",
            "--noise-mask-radius",
        )
    background = stack * outside
    background -= outside * (background.sum((-1, -2), keepdims=True) / outside.sum())
    power = np.abs(np.fft.rfft2(background, norm="ortho")) ** 2
    power = power.mean(0) / outside.mean()
    shells = radial_shells(box)
    inside = shells <= box // 2
    radial = np.bincount(shells[inside], power[inside]) / np.bincount(shells[inside])
    radial[0] = radial[1]
    freqs = np.arange(len(radial)) / (box * px)
    source = f"{star_path} ({len(rows)} particles, background beyond {radius_px * px:.4g} Å)"
    return NoiseSpectrum(freqs, radial, source)


def _find_stack(star_path: Path, name: str) -> Path:
    """A stack named in a star: beside it, from the working folder, or from a folder above it
    (a RELION project's stars name stacks from the project folder: ``Extract/job009/…``)."""
    for folder in (star_path.parent, Path.cwd(), *star_path.resolve().parents):
        if (folder / name).is_file():
            return folder / name
    raise InputFileError(
        star_path, f"stack file {name!r} not found beside it, here, or in a folder above it", "rlnImageName"
    )


def noise_filter(spectrum: NoiseSpectrum, box: int, pixel_size_angstrom: float) -> tuple[torch.Tensor, float]:
    """The amplitude filter ``sqrt(power(|k|/px))`` on the ``rfft2`` grid of ``box``, ``(L, L//2+1)``,
    and the variance per pixel it gives unit white noise (the spectrum's mean over the full grid)."""
    ky = np.fft.fftfreq(box)[:, None]
    kx_full = np.fft.fftfreq(box)[None, :]
    full = spectrum.power_at(np.sqrt(kx_full**2 + ky**2) / pixel_size_angstrom)
    kx = np.fft.rfftfreq(box)[None, :]
    half = spectrum.power_at(np.sqrt(kx**2 + ky**2) / pixel_size_angstrom)
    return torch.from_numpy(np.sqrt(np.maximum(half, 0.0))), float(full.mean())


def colour(white: torch.Tensor, amplitude: torch.Tensor) -> torch.Tensor:
    """White noise ``(m, L, L)`` filtered by ``amplitude`` (``(L, L//2+1)``, :func:`noise_filter`).

    Orthonormal transforms: each Fourier coefficient of unit white noise has unit mean power, so
    the result has power ``amplitude²`` at every frequency. float32 out.
    """
    box = white.shape[-1]
    spec = torch.fft.rfft2(white.double(), norm="ortho") * amplitude
    return torch.fft.irfft2(spec, s=(box, box), norm="ortho").float()


__all__ = [
    "NoiseSpectrum",
    "colour",
    "falloff_spectrum",
    "measure_noise_spectrum",
    "noise_filter",
    "radial_shells",
]
