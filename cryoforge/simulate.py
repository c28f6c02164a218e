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
from cryoforge.ops.fft import irfft2_images, rfft2_images
from cryoforge.ops.grids import rfft_grid_2d
from cryoforge.ops.projection import project_real_space
from cryoforge.ops.rotations import random_rotations
from cryoforge.ops.shift import phase_shift
from cryoforge.potential import atomic_model_to_map, demo_structure_path


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
    pixel_size_angstrom: float,
    batch: int = 128,
) -> torch.Tensor:
    """Noise-free particle images: real-space projection, then CTF and shift in Fourier space."""
    L = volume.shape[-1]
    freqs = rfft_grid_2d(L).reshape(-1, 2).double()
    out = []
    for s in range(0, len(rotations), batch):
        proj = project_real_space(volume, rotations[s : s + batch]).double()
        spec = rfft2_images(proj).reshape(proj.shape[0], -1)
        if ctf is not None:
            c = {k: torch.as_tensor(v[s : s + batch]) for k, v in ctf.items()}
            spec = spec * ctf_2d(freqs / pixel_size_angstrom, **c)
        spec = spec * phase_shift(freqs, shifts_px[s : s + batch].double())
        out.append(irfft2_images(spec.reshape(-1, L, L // 2 + 1), L).float())
    return torch.cat(out)


def simulate(
    input_path: str | Path | None, out_dir: str | Path, settings: SimulationSettings, progress: bool = False
) -> SimulationResult:
    """Write ``particles.mrcs``, ``particles.star`` (ground-truth poses, CTF), ``map.mrc`` and
    ``simulation.json`` (settings and realised SNR) into ``out_dir``.

    SNR is the variance ratio ``var(signal) / var(noise)`` over the dataset's boxes.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vol_np, voxel = load_input_map(input_path, settings)
    settings.pixel_size_angstrom = voxel
    settings.box_size = vol_np.shape[-1]
    L, n = settings.box_size, settings.n_particles
    gen = torch.Generator().manual_seed(settings.seed)
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
    vol = torch.from_numpy(vol_np)
    clean = simulate_images(vol, rot, shifts_a / voxel, ctf if settings.apply_ctf else None, voxel)
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
    if not settings.apply_ctf:
        ctf = {k: np.zeros(n) for k in ctf}  # voltage 0 marks CTF-free data
    table = ParticleTable(
        path=out_dir / "particles.star",
        image_names=np.array([f"{i + 1:06d}@particles.mrcs" for i in range(n)]),
        ctf=ctf,
        rotations=rot.double().numpy(),
        shifts_angstrom=shifts_a.numpy(),
        pixel_size_angstrom=voxel,
        box_size=L,
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
