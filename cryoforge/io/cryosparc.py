"""cryoSPARC ``.cs`` particle tables (numpy structured arrays, read without pickle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cryoforge.errors import InputFileError
from cryoforge.io.table import ParticleTable
from cryoforge.ops.rotations import rotvec_to_matrix


def read_cs(path: str | Path) -> ParticleTable:
    """Read particles, CTF and (when present) 3D alignments from a cryoSPARC ``.cs`` file.

    cryoSPARC's ``alignments3D/pose`` is an axis-angle vector whose matrix is the transpose of
    RELION's ``R``; ``alignments3D/shift`` is in pixels (same sign as RELION's origin).
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "cryoSPARC file not found")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputFileError(path, f"not a cryoSPARC .cs table ({exc})") from None
    names = arr.dtype.names or ()

    def field(name: str) -> np.ndarray:
        if name not in names:
            raise InputFileError(path, "required field missing", name)
        return np.asarray(arr[name])

    n = len(arr)
    pixel = float(field("blob/psize_A")[0])
    box = int(field("blob/shape")[0][0])
    ctf = {
        "defocus_u_angstrom": field("ctf/df1_A").astype(np.float64),
        "defocus_v_angstrom": field("ctf/df2_A").astype(np.float64),
        "astigmatism_angle_deg": np.rad2deg(field("ctf/df_angle_rad").astype(np.float64)),
        "voltage_kv": field("ctf/accel_kv").astype(np.float64),
        "cs_mm": field("ctf/cs_mm").astype(np.float64),
        "amplitude_contrast": field("ctf/amp_contrast").astype(np.float64),
        "phase_shift_deg": np.rad2deg(field("ctf/phase_shift_rad").astype(np.float64)),
        "bfactor_angstrom2": (field("ctf/bfactor").astype(np.float64) if "ctf/bfactor" in names
                              else np.zeros(n)),
    }
    rotations = shifts = None
    if "alignments3D/pose" in names:
        rotations = rotvec_to_matrix(torch.from_numpy(field("alignments3D/pose").astype(np.float64)))
        rotations = rotations.transpose(-1, -2).numpy()
        shifts = field("alignments3D/shift").astype(np.float64) * pixel
    blob_paths = [p.decode() if isinstance(p, bytes) else str(p) for p in field("blob/path")]
    blob_idx = field("blob/idx").astype(np.int64)
    image_names = np.array([f"{i + 1:06d}@{p.lstrip('>')}" for i, p in zip(blob_idx, blob_paths, strict=True)])
    return ParticleTable(path=path, image_names=image_names, ctf=ctf, rotations=rotations,
                         shifts_angstrom=shifts, pixel_size_angstrom=pixel, box_size=box)
