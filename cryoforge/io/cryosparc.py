"""cryoSPARC ``.cs`` particle tables (numpy structured arrays, read without pickle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cryoforge.errors import InputFileError
from cryoforge.io.table import ParticleTable
from cryoforge.io.validate import check_finite, check_readable_file
from cryoforge.ops.rotations import rotvec_to_matrix


def read_cs(path: str | Path) -> ParticleTable:
    """Read particles, CTF and (when present) 3D alignments from a cryoSPARC ``.cs`` file.

    cryoSPARC's ``alignments3D/pose`` is an axis-angle vector whose matrix is the transpose of
    RELION's ``R``; ``alignments3D/shift`` is in pixels (same sign as RELION's origin).
    """
    path = Path(path)
    check_readable_file(path, "cryoSPARC .cs file")
    with open(path, "rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            raise InputFileError(path, "not a cryoSPARC .cs table (not a numpy .npy file)")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        problem = "holds Python objects" if "allow_pickle" in str(exc) else "not a numpy table"
        raise InputFileError(path, f"not a cryoSPARC .cs table ({problem})") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 1:
        raise InputFileError(path, "not a cryoSPARC .cs table (need a 1-D structured array)")
    names = arr.dtype.names or ()
    if not names:
        raise InputFileError(path, "not a cryoSPARC .cs table (no named fields)")
    n = len(arr)
    if n == 0:
        raise InputFileError(path, "no particles: the table has fields but no rows", "rows")

    def field(name: str, positive: bool = False) -> np.ndarray:
        if name not in names:
            raise InputFileError(path, "required field missing", name)
        values = np.asarray(arr[name])
        return values if values.dtype.kind in "SUO" else check_finite(path, name, values, positive)

    psize = field("blob/psize_A", positive=True).astype(np.float64)
    pixel = float(psize[0])
    box = int(field("blob/shape", positive=True)[0][0])
    ctf = {
        "defocus_u_angstrom": field("ctf/df1_A").astype(np.float64),
        "defocus_v_angstrom": field("ctf/df2_A").astype(np.float64),
        "astigmatism_angle_deg": np.rad2deg(field("ctf/df_angle_rad").astype(np.float64)),
        "voltage_kv": field("ctf/accel_kv").astype(np.float64),
        "cs_mm": field("ctf/cs_mm").astype(np.float64),
        "amplitude_contrast": field("ctf/amp_contrast").astype(np.float64),
        "phase_shift_deg": np.rad2deg(field("ctf/phase_shift_rad").astype(np.float64)),
        "bfactor_angstrom2": (
            field("ctf/bfactor").astype(np.float64) if "ctf/bfactor" in names else np.zeros(n)
        ),
    }
    rotations = shifts = None
    if "alignments3D/pose" in names:
        rotations = rotvec_to_matrix(torch.from_numpy(field("alignments3D/pose").astype(np.float64)))
        rotations = rotations.transpose(-1, -2).numpy()
        shifts = field("alignments3D/shift").astype(np.float64) * psize[:, None]
    blob_paths = [_decode_path(path, p, i) for i, p in enumerate(field("blob/path"))]
    blob_idx = field("blob/idx").astype(np.int64)
    image_names = np.array(
        [f"{i + 1:06d}@{p.lstrip('>')}" for i, p in zip(blob_idx, blob_paths, strict=True)]
    )
    sign = None
    if "blob/sign" in names:  # -1: the stored particles are dark (micrograph contrast)
        sign = np.where(field("blob/sign").astype(np.float64) < 0, -1.0, 1.0)
    return ParticleTable(
        path=path,
        image_names=image_names,
        ctf=ctf,
        rotations=rotations,
        shifts_angstrom=shifts,
        pixel_size_angstrom=pixel,
        box_size=box,
        pixel_sizes_angstrom=psize,
        contrast_sign=sign,
    )


def _decode_path(path: Path, value: bytes | str, row: int) -> str:
    """A ``blob/path`` cell as text (cryoSPARC writes UTF-8 bytes)."""
    if not isinstance(value, bytes):
        return str(value)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(
            path, f"particle {row + 1}: path is not UTF-8 (byte 0x{value[exc.start]:02X})", "blob/path"
        ) from None


def write_cs(path: str | Path, table: ParticleTable, stack_path: str) -> None:
    """Write a minimal cryoSPARC ``.cs`` table (blob, CTF, 3D alignments) for ``table``.

    Images are ``stack_path`` in order; poses are stored as cryoSPARC axis-angle vectors (the
    transpose of RELION's matrix) and shifts in pixels.
    """
    from cryoforge.io.atomic import atomic_path
    from cryoforge.ops.rotations import matrix_to_rotvec

    n = len(table)
    px = float(table.pixel_size_angstrom or 1.0)
    encoded = stack_path.encode("utf-8")
    dtype = [
        ("uid", "<u8"),
        ("blob/path", f"S{max(256, len(encoded))}"),  # never truncated (a path may exceed 256 bytes)
        ("blob/idx", "<u4"),
        ("blob/shape", "<u4", (2,)),
        ("blob/psize_A", "<f4"),
        ("blob/sign", "<f4"),
        ("ctf/accel_kv", "<f4"),
        ("ctf/cs_mm", "<f4"),
        ("ctf/amp_contrast", "<f4"),
        ("ctf/df1_A", "<f4"),
        ("ctf/df2_A", "<f4"),
        ("ctf/df_angle_rad", "<f4"),
        ("ctf/phase_shift_rad", "<f4"),
        ("ctf/bfactor", "<f4"),
        ("alignments3D/shift", "<f4", (2,)),
        ("alignments3D/pose", "<f4", (3,)),
    ]
    arr = np.zeros(n, dtype=dtype)
    arr["uid"] = np.arange(n)
    arr["blob/path"] = encoded
    arr["blob/idx"] = np.arange(n)
    arr["blob/shape"] = table.box_size or 0
    arr["blob/psize_A"] = px
    arr["blob/sign"] = 1.0 if table.contrast_sign is None else table.contrast_sign
    c = table.ctf
    arr["ctf/accel_kv"], arr["ctf/cs_mm"], arr["ctf/amp_contrast"] = (
        c["voltage_kv"],
        c["cs_mm"],
        c["amplitude_contrast"],
    )
    arr["ctf/df1_A"], arr["ctf/df2_A"] = c["defocus_u_angstrom"], c["defocus_v_angstrom"]
    arr["ctf/df_angle_rad"] = np.deg2rad(c["astigmatism_angle_deg"])
    arr["ctf/phase_shift_rad"] = np.deg2rad(c["phase_shift_deg"])
    arr["ctf/bfactor"] = c["bfactor_angstrom2"]
    if table.rotations is not None:
        rt = torch.as_tensor(table.rotations).transpose(-1, -2)
        arr["alignments3D/pose"] = matrix_to_rotvec(rt).numpy()
        arr["alignments3D/shift"] = (table.shifts_angstrom if table.shifts_angstrom is not None else 0) / px
    with atomic_path(path, suffix=".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)
