"""cryoSPARC ``.cs`` tables with new poses: every other field as the input had it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cryoforge.errors import InputFileError
from cryoforge.io.atomic import atomic_path
from cryoforge.ops.rotations import matrix_to_rotvec

POSE_FIELD = "alignments3D/pose"
SHIFT_FIELD = "alignments3D/shift"


def read_cs_array(path: str | Path) -> np.ndarray:
    """The structured array of a ``.cs`` file, memory-mapped (no pickle)."""
    path = Path(path)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputFileError(path, f"not a cryoSPARC .cs table ({exc})") from None


def _with_pose_fields(arr: np.ndarray) -> np.ndarray:
    """A copy of ``arr`` with ``alignments3D/pose`` ``(3,)`` and ``/shift`` ``(2,)`` float32 fields."""
    names = arr.dtype.names or ()
    extra = [(f, "<f4", (k,)) for f, k in ((SHIFT_FIELD, 2), (POSE_FIELD, 3)) if f not in names]
    if not extra:
        return np.array(arr)
    out = np.zeros(len(arr), dtype=np.dtype(arr.dtype.descr + extra))
    for name in names:
        out[name] = arr[name]
    return out


def cs_with_poses(
    arr: np.ndarray,
    rows: Sequence[int] | np.ndarray,
    rotations: np.ndarray,
    shifts_angstrom: np.ndarray,
) -> np.ndarray:
    """The rows ``rows`` of a cryoSPARC table with new 3D alignments, every other field unchanged.

    The exact inverse of :func:`cryoforge.io.cryosparc.read_cs`: ``alignments3D/pose`` is the
    axis-angle vector (radians) of ``Rᵀ`` (cryoSPARC's matrix is the transpose of RELION's), and
    ``alignments3D/shift`` is the origin in pixels of each particle's ``blob/psize_A`` (same sign
    as RELION's origin). Tables without 3D alignments get the two fields appended.

    Parameters
    ----------
    arr
        The input table (:func:`read_cs_array`).
    rows
        ``(M,)`` 0-based rows to write, in output order.
    rotations
        ``(M, 3, 3)`` RELION rotation matrices.
    shifts_angstrom
        ``(M, 2)`` origins ``(x, y)`` in Å.
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = _with_pose_fields(arr[rows])
    rt = torch.as_tensor(np.asarray(rotations, dtype=np.float64)).transpose(-1, -2)
    out[POSE_FIELD] = matrix_to_rotvec(rt).numpy()
    psize = np.asarray(out["blob/psize_A"], dtype=np.float64)[:, None]
    out[SHIFT_FIELD] = np.asarray(shifts_angstrom, dtype=np.float64) / psize
    return out


def write_cs_array(path: str | Path, arr: np.ndarray) -> None:
    """Write a structured array as a ``.cs`` file (NumPy format) atomically."""
    with atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)


def cs_star_columns(arr: np.ndarray) -> dict[str, np.ndarray]:
    """RELION columns for the cryoSPARC fields that have one (beyond CTF, pixel size and poses).

    ``location/micrograph_path`` → ``rlnMicrographName``; ``location/center_x_frac`` and
    ``center_y_frac`` times ``location/micrograph_shape`` (ny, nx) → ``rlnCoordinateX/Y`` (pixels
    of the micrograph); ``alignments3D/split`` (0/1) → ``rlnRandomSubset`` (1/2).
    """
    names = arr.dtype.names or ()
    out: dict[str, np.ndarray] = {}
    if "location/micrograph_path" in names:
        paths = arr["location/micrograph_path"]
        out["rlnMicrographName"] = np.array(
            [(p.decode() if isinstance(p, bytes) else str(p)).lstrip(">") for p in paths]
        )
    if {"location/center_x_frac", "location/center_y_frac", "location/micrograph_shape"} <= set(names):
        shape = np.asarray(arr["location/micrograph_shape"], dtype=np.float64)
        out["rlnCoordinateX"] = np.asarray(arr["location/center_x_frac"], np.float64) * shape[:, 1]
        out["rlnCoordinateY"] = np.asarray(arr["location/center_y_frac"], np.float64) * shape[:, 0]
    if "alignments3D/split" in names:
        out["rlnRandomSubset"] = np.asarray(arr["alignments3D/split"], dtype=np.int64) + 1
    return out
