"""The in-memory particle table: metadata for every particle (no images)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from cryoforge.types import CTFParams, Pose

CTF_FIELDS = (
    "defocus_u_angstrom",
    "defocus_v_angstrom",
    "astigmatism_angle_deg",
    "voltage_kv",
    "cs_mm",
    "amplitude_contrast",
    "phase_shift_deg",
    "bfactor_angstrom2",
)


@dataclass
class ParticleTable:
    """Per-particle metadata read from a STAR/CS/pickle file.

    Attributes
    ----------
    image_names
        ``(N,)`` RELION-style ``index@file`` references (1-based index), or ``None``.
    ctf
        Field name → ``(N,)`` float64 (keys :data:`CTF_FIELDS`).
    rotations
        ``(N, 3, 3)`` RELION matrices, or ``None``.
    shifts_angstrom
        ``(N, 2)`` shifts ``(x, y)`` in Å (same sign as ``rlnOriginXAngst``), or ``None``.
    pixel_size_angstrom
        Dataset pixel size in Å (the median when optics groups differ).
    pixel_sizes_angstrom
        ``(N,)`` each particle's own pixel size in Å (its optics group's), or ``None``.
    has_ctf
        ``False`` for CTF-free data (a table without defocus values, whatever its voltage).
    contrast_sign
        ``(N,)`` ``+1`` where the molecule is white in the stored image (RELION's convention),
        ``-1`` where it is dark (cryoSPARC's ``blob/sign``); ``None`` means all ``+1``.
    fields
        The file's name for a quantity where the reader knows it differs from the format's usual
        one (keys of :data:`cryoforge.io.physical.RELION_FIELDS`), for messages.
    """

    path: Path
    image_names: np.ndarray | None
    ctf: dict[str, np.ndarray]
    rotations: np.ndarray | None = None
    shifts_angstrom: np.ndarray | None = None
    pixel_size_angstrom: float | None = None
    box_size: int | None = None
    pixel_sizes_angstrom: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    has_ctf: bool = True
    contrast_sign: np.ndarray | None = None
    fields: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ctf["defocus_u_angstrom"])

    def take(self, rows: np.ndarray) -> ParticleTable:
        """The particles ``rows`` (0-based, ``(M,)``) as a new table; dataset-wide values kept."""
        rows = np.asarray(rows, dtype=np.int64)
        pick = lambda a: None if a is None else np.asarray(a)[rows]
        return replace(
            self,
            image_names=pick(self.image_names),
            ctf={k: np.asarray(v)[rows] for k, v in self.ctf.items()},
            rotations=pick(self.rotations),
            shifts_angstrom=pick(self.shifts_angstrom),
            pixel_sizes_angstrom=pick(self.pixel_sizes_angstrom),
            extra={k: np.asarray(v)[rows] for k, v in self.extra.items()},
            contrast_sign=pick(self.contrast_sign),
        )

    def ctf_params(self, pixel_scale: float = 1.0) -> CTFParams:
        """CTF parameters of every particle, with each particle's pixel size times ``pixel_scale``
        (the downsampling factor) when the table knows it."""
        px = self.pixel_sizes_angstrom
        return CTFParams(
            **{k: torch.tensor(self.ctf[k], dtype=torch.float32) for k in CTF_FIELDS},
            pixel_size_angstrom=None if px is None else torch.tensor(px * pixel_scale, dtype=torch.float32),
        )

    def pose(self) -> Pose | None:
        if self.rotations is None:
            return None
        sh = self.shifts_angstrom if self.shifts_angstrom is not None else np.zeros((len(self), 2))
        return Pose(torch.tensor(self.rotations, dtype=torch.float32), torch.tensor(sh, dtype=torch.float32))

    def per_particle_pixel_size(self) -> np.ndarray:
        """``(N,)`` pixel sizes in Å (optics groups may differ slightly)."""
        if self.pixel_sizes_angstrom is not None:
            return self.pixel_sizes_angstrom
        return np.full(len(self), float(self.pixel_size_angstrom or np.nan))

    def cryodrgn_ctf(self) -> np.ndarray:
        """``(N, 9)`` array in cryoDRGN's CTF pickle layout."""
        n = len(self)
        return np.stack(
            [
                np.full(n, float(self.box_size or 0)),
                self.per_particle_pixel_size(),
                self.ctf["defocus_u_angstrom"],
                self.ctf["defocus_v_angstrom"],
                self.ctf["astigmatism_angle_deg"],
                self.ctf["voltage_kv"],
                self.ctf["cs_mm"],
                self.ctf["amplitude_contrast"],
                self.ctf["phase_shift_deg"],
            ],
            1,
        )


def parse_image_name(name: str) -> tuple[int, str]:
    """``'000012@path/stack.mrcs'`` → ``(11, 'path/stack.mrcs')`` (0-based index).

    Raises
    ------
    ValueError
        When the index is not a whole number ≥ 1 or the file part is empty (the message says which).
    """
    if "@" not in name:
        if not name.strip():
            raise ValueError("empty image name")
        return 0, name
    idx, file = name.split("@", 1)
    if not file.strip():
        raise ValueError(f"image name {name!r} has no file after '@'")
    text = idx.strip()
    if not text.isdigit():
        raise ValueError(f"image name {name!r}: index {idx!r} is not a whole number ≥ 1")
    if int(text) < 1:
        raise ValueError(f"image name {name!r}: index {idx!r} must be ≥ 1 (RELION counts from 1)")
    return int(text) - 1, file
