"""Simulate a particle dataset (``.mrcs`` + ``.star`` with ground truth) from a map or a model."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cryoforge.io.atomic import atomic_path
from cryoforge.io.mrc import read_map, write_mrc
from cryoforge.io.star import write_star
from cryoforge.io.table import ParticleTable
from cryoforge.ops.ctf import ctf_2d
from cryoforge.ops.fft import irfft2_images
from cryoforge.ops.grids import rfft_grid_2d
from cryoforge.ops.projection import oversampled_spectrum, project_fourier
from cryoforge.ops.rotations import random_rotations
from cryoforge.ops.shift import origin_phase
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

    Returns
    -------
    ``(N, L, L)`` float32 images.
    """
    L = volume.shape[-1]
    P = pad * L  # the box the image is formed in (cycles/px are the same: the pixel size is)
    freqs = rfft_grid_2d(P).reshape(-1, 2).double()
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
        spec = spec * origin_phase(freqs, shifts_px[s : s + batch].double())
        # orthonormal DFTs: the same projection's coefficients scale as 1 / box
        img = irfft2_images(spec.reshape(-1, P, P // 2 + 1) * (L / P), P)
        out.append(img[:, start : start + L, start : start + L].float())
    return torch.cat(out)


def random_parameters(
    settings: SimulationSettings, n: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, dict[str, np.ndarray]]:
    """Uniform rotations, Gaussian origins (Å) and log-normal defocus CTFs for ``n`` particles."""
    rng = np.random.default_rng(settings.seed)
    rot = random_rotations(n, gen)
    shifts_a = torch.randn(n, 2, generator=gen, dtype=torch.float64) * settings.shift_std_angstrom
    mean_def = settings.defocus_median_angstrom * np.exp(rng.normal(0, settings.defocus_log_std, n))
    astig = rng.uniform(-0.5, 0.5, n) * settings.astigmatism_angstrom
    ctf = {
        "defocus_u_angstrom": mean_def + astig,
        "defocus_v_angstrom": mean_def - astig,
        "astigmatism_angle_deg": rng.uniform(-180, 180, n),
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
    clean = simulate_images(
        vol, rot, shifts_px, ctf if settings.apply_ctf else None, pixel_sizes, pad=2 if settings.pad else 1
    )
    realised = None
    images = clean
    if settings.snr is not None:
        sig_var = float(clean.double().var())
        noise = torch.randn(clean.shape, generator=gen) * float(np.sqrt(sig_var / settings.snr))
        images = clean + noise
        realised = sig_var / float(noise.double().var())
    stack = out_dir / "particles.mrcs"
    write_mrc(stack, images.numpy(), voxel, stack=True)
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
    )
    write_star(table.path, table)
    meta = {
        "settings": asdict(settings),
        "realised_snr": realised,
        "input": str(input_path) if input_path else "builtin:adk_open (PDB 4AKE)",
    }
    with atomic_path(out_dir / "simulation.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    return SimulationResult(table.path, stack, out_dir / "map.mrc", realised)
