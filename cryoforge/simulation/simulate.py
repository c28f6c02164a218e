"""Simulate a particle dataset (``.mrcs`` + ``.star`` with ground truth) from a map or a model."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cryoforge.io.atomic import atomic_path
from cryoforge.io.console_progress import ParticleProgress
from cryoforge.io.mrc import read_map, write_mrc
from cryoforge.io.mrc_stream import StackWriter
from cryoforge.io.star import JUNK_COLUMN, write_star
from cryoforge.io.table import ParticleTable
from cryoforge.ops.ctf import ctf_2d
from cryoforge.ops.fft import irfft2_images
from cryoforge.ops.grids import rfft_grid_2d
from cryoforge.ops.projection import oversampled_spectrum, project_fourier
from cryoforge.ops.rotations import random_rotations
from cryoforge.ops.shift import origin_phase
from cryoforge.simulation.noise import (
    NoiseSpectrum,
    colour,
    falloff_spectrum,
    measure_noise_spectrum,
    noise_filter,
)
from cryoforge.simulation.potential import atomic_model_to_map, demo_structure_path


@dataclass
class SimulationSettings:
    """Settings of :func:`simulate` (units in the names)."""

    n_particles: int = 1000
    box_size: int = 32
    pixel_size_angstrom: float = 3.0
    snr: float | None = 1.0
    shift_std_angstrom: float = 0.0
    defocus_median_angstrom: float = 20000.0
    defocus_log_std: float = 0.2
    astigmatism_angstrom: float = 200.0
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1
    apply_ctf: bool = True
    seed: int = 0
    pad: bool = True  # form images in a 2× box and crop: shifts and the CTF's spread do not wrap
    # What real data have (issue 23); every default leaves the dataset exactly as before.
    defocus_range_angstrom: tuple[float, float] | None = None
    """mean defocus (dU + dV)/2 uniform in this range, Å (instead of the log-normal)"""
    astigmatism_range_angstrom: tuple[float, float] | None = None
    """dU − dV uniform in this range, Å, at an angle uniform in [0°, 180°) (instead of
    ``astigmatism_angstrom``'s ±half at an angle uniform in [−180°, 180°))"""
    bfactor_angstrom2: float = 0.0
    """envelope exp(−B s²/4) on the signal (s in Å⁻¹); not written to the star (unknown in real data)"""
    noise_like: str | None = None
    """a RELION star of real particles whose background's radial power spectrum colours the noise"""
    noise_mask_radius_angstrom: float | None = None
    """radius of the particle mask for ``noise_like``, Å (default 0.375 × the source's box side)"""
    noise_falloff_angstrom: float | None = None
    """coloured noise of power ∝ 1 / (1 + (s·D0)²), D0 in Å (s in Å⁻¹)"""
    contrast_log_std: float = 0.0
    """per-particle contrast scale exp(σ·N(0, 1)): log-normal, median 1, σ this value"""
    junk_fraction: float = 0.0
    """this share of the images is junk: half pure noise, half another molecule (``junk_model``)"""
    junk_model: str | None = None
    """the junk molecule: .pdb/.cif/.mrc (an .mrc on the dataset's grid); None: a random blob"""
    chunk_images: int | None = None
    float16: bool = False
    """write the stack as float16 (MRC mode 12, half the bytes; as RELION 4+ can write)"""
    """images formed and written at a time (None: :func:`chunk_size`'s, about 64 MiB)"""


@dataclass
class SimulationResult:
    star: Path
    stack: Path
    map: Path
    realised_snr: float | None


def load_input_map(path: str | Path | None, settings: SimulationSettings) -> tuple[np.ndarray, float]:
    """A map from ``.mrc`` (as is) or an atomic model (potential at the settings' box/pixel size).

    ``None`` means the built-in demo structure (adenylate kinase, 4AKE).
    """
    if path is None:
        path = demo_structure_path()
    path = Path(path)
    suffixes = "".join(path.suffixes[-2:]).lower()
    if path.suffix.lower() in (".mrc", ".map"):
        vol, voxel = read_map(path)
        return vol, voxel or settings.pixel_size_angstrom
    if any(s in suffixes for s in (".pdb", ".cif", ".ent")):
        return atomic_model_to_map(
            path, settings.box_size, settings.pixel_size_angstrom
        ), settings.pixel_size_angstrom
    from cryoforge.errors import InputFileError

    raise InputFileError(path, "expected an .mrc map or a .pdb/.cif atomic model", "suffix")


def simulate_images(
    volume: torch.Tensor,
    rotations: torch.Tensor,
    shifts_px: torch.Tensor,
    ctf: dict[str, np.ndarray] | None,
    pixel_size_angstrom: float | np.ndarray,
    batch: int = 128,
    oversample: int = 2,
    pad: int = 1,
    bfactor_angstrom2: float = 0.0,
    spectrum: torch.Tensor | None = None,
) -> torch.Tensor:
    """Noise-free particle images in RELION's conventions.

    Each image is the central slice of the map's 2×-oversampled, gridding-corrected spectrum (the
    map's exact projection up to Nyquist), times the CTF (RELION's sign: the molecule is white),
    placed at ``−origin`` (``shifts_px`` are origins as a RELION star states them).

    With ``pad = 1`` the image is formed in the box itself, so a shift or the CTF's spread wraps
    round the box edge (as RELION's ``relion_project`` does). With ``pad = 2`` it is formed in a
    box twice as wide and cropped, as on a micrograph: a particle moved by a large origin leaves
    the box, and what the CTF spreads beyond the edge is lost. The padded slice samples the
    2×-oversampled spectrum at its own lattice points (spacing ``1 / (pad·L)``), so padding adds
    no interpolation.

    Parameters
    ----------
    volume
        ``(L, L, L)`` map ``[z, y, x]``.
    rotations
        ``(N, 3, 3)`` RELION matrices.
    shifts_px
        ``(N, 2)`` origins ``(x, y)`` in pixels.
    ctf
        :data:`cryoforge.io.table.CTF_FIELDS` → ``(N,)`` arrays, or ``None`` for CTF-free images.
    pixel_size_angstrom
        Å/px, one value or ``(N,)`` per particle.
    bfactor_angstrom2
        B of an envelope ``exp(−B s²/4)`` (s in Å⁻¹, each particle's pixel size) on the signal,
        with or without a CTF; 0: none.
    spectrum
        ``oversampled_spectrum(volume, oversample)`` when the caller has it already (chunks).

    Returns
    -------
    ``(N, L, L)`` float32 images.
    """
    L = volume.shape[-1]
    P = pad * L  # the box the image is formed in (cycles/px are the same: the pixel size is)
    freqs = rfft_grid_2d(P).reshape(-1, 2).double()
    if spectrum is None:
        spectrum = oversampled_spectrum(volume, oversample)
    px_all = np.broadcast_to(np.asarray(pixel_size_angstrom, dtype=np.float64), (len(rotations),))
    start = P // 2 - L // 2  # the padded box's centre P//2 becomes the crop's centre L//2
    out = []
    for s in range(0, len(rotations), batch):
        spec = project_fourier(spectrum, rotations[s : s + batch], freqs, oversample)
        if ctf is not None:
            c = {k: torch.tensor(np.array(v[s : s + batch], dtype=np.float64)) for k, v in ctf.items()}
            px = torch.as_tensor(px_all[s : s + batch].copy()).reshape(-1, 1, 1)
            spec = spec * ctf_2d(freqs[None] / px, **c)
        if bfactor_angstrom2:
            px_b = torch.as_tensor(px_all[s : s + batch].copy()).reshape(-1, 1)
            s2 = freqs.pow(2).sum(-1)[None] / px_b**2
            spec = spec * torch.exp(-bfactor_angstrom2 * s2 / 4)
        spec = spec * origin_phase(freqs, shifts_px[s : s + batch].double())
        # orthonormal DFTs: the same projection's coefficients scale as 1 / box
        img = irfft2_images(spec.reshape(-1, P, P // 2 + 1) * (L / P), P)
        out.append(img[:, start : start + L, start : start + L].float())
    return torch.cat(out)


def random_parameters(
    settings: SimulationSettings, n: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, dict[str, np.ndarray]]:
    """Uniform rotations, Gaussian origins (Å) and CTFs for ``n`` particles: defocus log-normal
    around the median, or uniform in ``defocus_range_angstrom``; astigmatism as the settings say."""
    rng = np.random.default_rng(settings.seed)
    rot = random_rotations(n, gen)
    shifts_a = torch.randn(n, 2, generator=gen, dtype=torch.float64) * settings.shift_std_angstrom
    if settings.defocus_range_angstrom is None:
        mean_def = settings.defocus_median_angstrom * np.exp(rng.normal(0, settings.defocus_log_std, n))
    else:
        mean_def = rng.uniform(*settings.defocus_range_angstrom, n)
    if settings.astigmatism_range_angstrom is None:
        astig = rng.uniform(-0.5, 0.5, n) * settings.astigmatism_angstrom
        angle = rng.uniform(-180, 180, n)
    else:  # half of dU − dV; the angle of U from x, [0°, 180°) covers every direction
        astig = rng.uniform(*settings.astigmatism_range_angstrom, n) / 2
        angle = rng.uniform(0, 180, n)
    ctf = {
        "defocus_u_angstrom": mean_def + astig,
        "defocus_v_angstrom": mean_def - astig,
        "astigmatism_angle_deg": angle,
        "voltage_kv": np.full(n, settings.voltage_kv),
        "cs_mm": np.full(n, settings.cs_mm),
        "amplitude_contrast": np.full(n, settings.amplitude_contrast),
        "phase_shift_deg": np.zeros(n),
        "bfactor_angstrom2": np.zeros(n),
    }
    return rot.double(), shifts_a, ctf


def read_like_table(path: str | Path) -> ParticleTable:
    """The particle table whose poses, shifts, CTF, box and pixel size ``simulate --like`` copies."""
    from cryoforge.errors import InputFileError
    from cryoforge.io.cryosparc import read_cs
    from cryoforge.io.star import read_star

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".star", ".cs"):
        raise InputFileError(path, "expected a .star or .cs particle file", "--like")
    table = read_star(path) if suffix == ".star" else read_cs(path)
    if table.rotations is None:
        raise InputFileError(path, "no poses to copy (rlnAngleRot/Tilt/Psi)", "rlnAngleRot")
    if table.box_size is None and table.image_names is not None:
        try:  # RELION 3.0 stars do not state the box: read it from the first stack's header
            from cryoforge.io.mrc import open_stack
            from cryoforge.io.table import parse_image_name

            stack = path.parent / parse_image_name(str(table.image_names[0]))[1]
            table.box_size = int(open_stack(stack).shape[-1])
        except Exception:
            pass
    if table.box_size is None or table.pixel_size_angstrom is None:
        raise InputFileError(path, "the table states no box size or pixel size", "rlnImageSize")
    return table


def check_map_matches_table(
    map_path: str | Path | None, box: int, voxel: float, table: ParticleTable
) -> None:
    """One clear error when the map's box or pixel size differs from the particle table's."""
    from cryoforge.errors import InputFileError

    want_px = float(table.pixel_size_angstrom or 0.0)
    if box != table.box_size or abs(voxel - want_px) > 1e-3 * want_px:
        raise InputFileError(
            map_path or "map",
            f"map is {box} px at {voxel:.4g} Å/px but {table.path.name} has {table.box_size} px "
            f"at {want_px:.4g} Å/px",
            "box/pixel size",
        )


CHUNK_BYTES = 64 << 20
"""About this many bytes of float32 images are formed at a time; a larger dataset is written in
chunks (:class:`cryoforge.io.mrc_stream.StackWriter`), so memory does not grow with it."""

CONTRAST_COLUMN = "cryoforgeContrastScale"
"""The star column with each image's contrast scale (when ``contrast_log_std`` > 0)."""


def chunk_size(box: int, chunk_images: int | None = None) -> int:
    """Images formed at a time: ``chunk_images`` or about :data:`CHUNK_BYTES`, a multiple of 16
    (so that the noise drawn chunk by chunk is the very noise drawn at once)."""
    if chunk_images is None:
        chunk_images = max(128, CHUNK_BYTES // (4 * box * box) // 128 * 128)
    return max(16, -(-int(chunk_images) // 16) * 16)


class _Moments:
    """Count, mean and sum of squared deviations, merged chunk by chunk (Chan et al.'s pairwise
    update), in float64; :meth:`var` is the unbiased variance, as ``torch.var``."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x: torch.Tensor) -> None:
        x = x.double().reshape(-1)
        k = x.numel()
        if k == 0:
            return
        mean_b = float(x.mean())
        m2_b = float((x - mean_b).pow(2).sum())
        total = self.count + k
        delta = mean_b - self.mean
        self.m2 += m2_b + delta * delta * self.count * k / total
        self.mean += delta * k / total
        self.count = total

    def var(self) -> float:
        return self.m2 / max(self.count - 1, 1)


@dataclass
class Realism:
    """What each particle gets beyond its pose and CTF (:func:`draw_realism`)."""

    junk_kind: np.ndarray
    """``(N,)`` int8: 0 a true particle, 1 junk of pure noise, 2 junk of another molecule"""
    contrast: np.ndarray | None
    """``(N,)`` contrast scales, or ``None`` (all 1)"""
    junk_map: np.ndarray | None
    junk_source: str | None

    def star_columns(self) -> dict[str, np.ndarray]:
        """The extra star columns: the junk flag when there is junk, the contrast when it varies."""
        cols: dict[str, np.ndarray] = {}
        if self.junk_kind.any():
            cols[JUNK_COLUMN] = (self.junk_kind > 0).astype(np.int64)
        if self.contrast is not None:
            cols[CONTRAST_COLUMN] = self.contrast
        return cols

    def metadata(self) -> dict:
        if not self.junk_kind.any():
            return {}
        return {
            "junk": {
                "n_noise": int((self.junk_kind == 1).sum()),
                "n_molecule": int((self.junk_kind == 2).sum()),
                "model": self.junk_source,
            }
        }


def junk_blob(box: int, rng: np.random.Generator) -> np.ndarray:
    """A random globular blob: six Gaussian balls (σ L/16 to L/8) within L/5 of the centre."""
    r = np.arange(box) - box // 2
    z, y, x = np.meshgrid(r, r, r, indexing="ij")
    vol = np.zeros((box, box, box))
    for _ in range(6):
        c = np.clip(rng.normal(0, box / 10, 3), -box / 5, box / 5)
        sigma = rng.uniform(box / 16, box / 8)
        vol += rng.uniform(0.5, 1.0) * np.exp(
            -((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * sigma * sigma)
        )
    return vol.astype(np.float32)


def load_junk_map(
    path: str | Path | None, box: int, voxel: float, main_map: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, str]:
    """The junk molecule on the dataset's grid, scaled to the main map's integrated density (its
    sum: the projections' mean), so that junk is as bright as the particles; and its name.

    ``None`` gives :func:`junk_blob`; a ``.pdb/.cif`` its potential at the dataset's box and pixel
    size; an ``.mrc`` must be on that grid already.
    """
    from cryoforge.errors import InputFileError

    if path is None:
        vol, source = junk_blob(box, rng), "random blob"
    else:
        path = Path(path)
        if not path.is_file():
            raise InputFileError(path, "junk model not found", "--junk-model")
        if path.suffix.lower() in (".mrc", ".map"):
            vol, junk_voxel = read_map(path)
            if vol.shape[-1] != box or abs(junk_voxel - voxel) > 1e-3 * voxel:
                raise InputFileError(
                    path,
                    f"map is {vol.shape[-1]} px at {junk_voxel:.4g} Å/px but the dataset is {box} px at "
                    f"{voxel:.4g} Å/px",
                    "--junk-model",
                )
        else:
            vol = load_input_map(path, SimulationSettings(box_size=box, pixel_size_angstrom=voxel))[0]
        source = str(path)
    total, main_total = float(vol.sum()), float(main_map.sum())
    if total > 0 and main_total > 0:
        vol = vol * np.float32(main_total / total)
    return np.ascontiguousarray(vol, dtype=np.float32), source


def draw_realism(settings: SimulationSettings, n: int, main_map: np.ndarray, voxel: float) -> Realism:
    """Which particles are junk (exactly ``round(junk_fraction · n)``, at most ``n − 1``, chosen at
    random; the first half of them, rounded down, pure noise, the rest the junk molecule) and
    each one's contrast scale. Drawn from a generator of its own (seed ``[seed, 23]``), so the
    poses, CTFs and noise of the other settings are unchanged."""
    rng = np.random.default_rng([settings.seed, 23])
    kind = np.zeros(n, dtype=np.int8)
    n_junk = min(round(settings.junk_fraction * n), n - 1)  # at least one true particle
    if n_junk:
        picked = rng.permutation(n)[:n_junk]
        kind[picked[: n_junk // 2]] = 1
        kind[picked[n_junk // 2 :]] = 2
    contrast = None
    if settings.contrast_log_std > 0:
        contrast = np.exp(settings.contrast_log_std * rng.standard_normal(n))
    junk_map = source = None
    if (kind == 2).any():
        junk_map, source = load_junk_map(settings.junk_model, main_map.shape[-1], voxel, main_map, rng)
    return Realism(kind, contrast, junk_map, source)


class _Renderer:
    """Noise-free images of particles ``a … b − 1``: the map's (or the junk's) projections, the
    B-factor envelope, the contrast scale; zeros for pure-noise junk."""

    def __init__(self, vol, rot, shifts_px, ctf, pixel_sizes, settings: SimulationSettings, real: Realism):
        self.vol, self.rot, self.shifts_px, self.ctf = vol, rot, shifts_px, ctf
        self.pixel_sizes = np.asarray(pixel_sizes)
        self.pad = 2 if settings.pad else 1
        self.bfactor = settings.bfactor_angstrom2
        self.real = real
        self.spectrum = oversampled_spectrum(vol, 2)
        self.junk_vol = None if real.junk_map is None else torch.from_numpy(real.junk_map)
        self.junk_spectrum = None if self.junk_vol is None else oversampled_spectrum(self.junk_vol, 2)

    def _images(self, rows: np.ndarray, vol: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor:
        idx = torch.from_numpy(rows)
        ctf = None if self.ctf is None else {k: np.asarray(v)[rows] for k, v in self.ctf.items()}
        return simulate_images(
            vol,
            self.rot[idx],
            self.shifts_px[idx],
            ctf,
            self.pixel_sizes[rows],
            pad=self.pad,
            bfactor_angstrom2=self.bfactor,
            spectrum=spectrum,
        )

    def __call__(self, a: int, b: int) -> torch.Tensor:
        kind = self.real.junk_kind[a:b]
        if not kind.any():
            if a == 0 and b == len(self.rot):  # the whole dataset: the very call of old
                ctf = self.ctf
                images = simulate_images(
                    self.vol,
                    self.rot,
                    self.shifts_px,
                    ctf,
                    self.pixel_sizes,
                    pad=self.pad,
                    bfactor_angstrom2=self.bfactor,
                    spectrum=self.spectrum,
                )
            else:
                images = self._images(np.arange(a, b), self.vol, self.spectrum)
        else:
            L = self.vol.shape[-1]
            images = torch.zeros(b - a, L, L)
            for k, vol, spectrum in ((0, self.vol, self.spectrum), (2, self.junk_vol, self.junk_spectrum)):
                local = np.flatnonzero(kind == k)
                if len(local):
                    images[torch.from_numpy(local)] = self._images(a + local, vol, spectrum)
        if self.real.contrast is not None:
            scale = torch.from_numpy(self.real.contrast[a:b].astype(np.float32))
            images = images * scale[:, None, None]
        return images


class _NoiseMaker:
    """Gaussian noise for ``m`` images at the variance that gives the requested SNR: white (as
    before), or coloured by ``noise_like``'s measured spectrum or ``noise_falloff_angstrom``'s.

    The white noise is drawn from the simulation's generator in every case, image after image,
    so that chunks draw the very noise drawn at once.
    """

    def __init__(self, settings: SimulationSettings, box: int, voxel: float, gen: torch.Generator):
        self.settings, self.box, self.gen = settings, box, gen
        self.spectrum: NoiseSpectrum | None = None
        if settings.snr is None:  # no noise at all
            return
        if settings.noise_like:
            self.spectrum = measure_noise_spectrum(settings.noise_like, settings.noise_mask_radius_angstrom)
        elif settings.noise_falloff_angstrom:
            self.spectrum = falloff_spectrum(settings.noise_falloff_angstrom, voxel)
        if self.spectrum is not None:
            self.amplitude, self.mean_power = noise_filter(self.spectrum, box, voxel)

    def __call__(self, m: int, signal_var: float) -> torch.Tensor:
        snr = self.settings.snr
        assert snr is not None
        white = torch.randn((m, self.box, self.box), generator=self.gen)
        if self.spectrum is None:
            return white * float(np.sqrt(signal_var / snr))
        return colour(white, self.amplitude) * float(np.sqrt(signal_var / snr / self.mean_power))

    def metadata(self) -> dict:
        return {} if self.spectrum is None else {"noise_spectrum": self.spectrum.as_dict()}


OUTPUT_NAMES = ("particles.mrcs", "particles.star", "map.mrc", "simulation.json")
"""What :func:`simulate` writes into its folder."""


def simulate(
    input_path: str | Path | None,
    out_dir: str | Path,
    settings: SimulationSettings,
    progress: bool = False,
    like: ParticleTable | None = None,
) -> SimulationResult:
    """Write ``particles.mrcs``, ``particles.star`` (ground-truth poses, CTF), ``map.mrc`` and
    ``simulation.json`` (settings and realised SNR) into ``out_dir``.

    SNR is the variance ratio ``var(signal) / var(noise)`` over the dataset's boxes. With
    ``like``, poses, origins, CTF (when it has defocus values and ``settings.apply_ctf``), box,
    pixel sizes and the particle count come from that table instead of being drawn at random.
    ``progress``: a stack written in chunks shows its particles done and the time left on stderr
    (:class:`~cryoforge.io.console_progress.ParticleProgress`), once for the clean images and once
    for the noise.
    """
    out_dir = Path(out_dir)
    if like is not None:
        settings.box_size = int(like.box_size or settings.box_size)
        settings.pixel_size_angstrom = float(like.pixel_size_angstrom or settings.pixel_size_angstrom)
        settings.n_particles = len(like)
        settings.apply_ctf = settings.apply_ctf and like.has_ctf
    vol_np, voxel = load_input_map(input_path, settings)
    if like is not None:
        check_map_matches_table(input_path, vol_np.shape[-1], voxel, like)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings.pixel_size_angstrom = voxel
    settings.box_size = vol_np.shape[-1]
    L, n = settings.box_size, settings.n_particles
    gen = torch.Generator().manual_seed(settings.seed)
    if like is None:
        rot, shifts_a, ctf = random_parameters(settings, n, gen)
        pixel_sizes = np.full(n, voxel)
    else:
        rot = torch.tensor(np.array(like.rotations, dtype=np.float64))
        shifts_a = torch.tensor(
            np.array(
                like.shifts_angstrom if like.shifts_angstrom is not None else np.zeros((n, 2)),
                dtype=np.float64,
            )
        )
        ctf = {k: np.asarray(v, dtype=np.float64) for k, v in like.ctf.items()}
        pixel_sizes = like.per_particle_pixel_size()
        pixel_sizes = np.where(np.isfinite(pixel_sizes), pixel_sizes, voxel)
    vol = torch.from_numpy(vol_np)
    shifts_px = shifts_a / torch.tensor(np.array(pixel_sizes, dtype=np.float64))[:, None]
    real = draw_realism(settings, n, vol_np, voxel)
    render = _Renderer(vol, rot, shifts_px, ctf if settings.apply_ctf else None, pixel_sizes, settings, real)
    noise = _NoiseMaker(settings, L, voxel, gen)
    stack = out_dir / "particles.mrcs"
    keep = real.junk_kind == 0  # the SNR is the true particles'
    chunk = chunk_size(L, settings.chunk_images)
    realised = None
    if (
        n <= chunk and not settings.float16
    ):  # the whole stack at once (the demo: bit for bit as before chunks existed)
        clean = render(0, n)
        images = clean
        if settings.snr is not None:
            sig_var = float(clean.double().var()) if keep.all() else float(clean[keep].double().var())
            added = noise(n, sig_var)
            images = clean + added
            realised = sig_var / float(added.double().var())
        write_mrc(stack, images.numpy(), voxel, stack=True)
    else:  # chunk by chunk: clean images first, then (second pass) the noise, in place
        with StackWriter(stack, n, L, voxel, settings.float16) as writer:
            signal = _Moments()
            bar = ParticleProgress("simulate: clean images", n, enabled=progress)
            for a in range(0, n, chunk):
                clean = render(a, min(n, a + chunk))
                writer.write(a, clean.numpy())
                signal.add(clean[torch.from_numpy(keep[a : a + chunk])])
                bar.update(min(n, a + chunk))
            bar.close()
            if settings.snr is not None:
                sig_var, added_var = signal.var(), _Moments()
                writer.reset_stats()
                bar = ParticleProgress("simulate: noise", n, enabled=progress)
                for a in range(0, n, chunk):
                    m = min(n, a + chunk) - a
                    added = noise(m, sig_var)
                    added_var.add(added)
                    writer.write(a, torch.from_numpy(writer.read(a, m)).add_(added).numpy())
                    bar.update(a + m)
                bar.close()
                realised = sig_var / added_var.var()
    write_mrc(out_dir / "map.mrc", vol_np, voxel)
    table = ParticleTable(
        path=out_dir / "particles.star",
        image_names=np.array([f"{i + 1:06d}@particles.mrcs" for i in range(n)]),
        ctf=ctf,
        rotations=rot.numpy(),
        shifts_angstrom=shifts_a.numpy(),
        pixel_size_angstrom=voxel,
        box_size=L,
        has_ctf=settings.apply_ctf,  # CTF-free data: a star without defocus columns
        extra=real.star_columns(),
    )
    write_star(table.path, table)
    meta = {
        "settings": asdict(settings),
        "realised_snr": realised,
        "input": str(input_path) if input_path else "builtin:adk_open (PDB 4AKE)",
        **real.metadata(),
        **noise.metadata(),
        "chunks": -(-n // chunk),
    }
    with atomic_path(out_dir / "simulation.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    return SimulationResult(table.path, stack, out_dir / "map.mrc", realised)
