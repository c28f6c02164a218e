"""cryoDRGN pose/CTF pickles, read with a restricted unpickler that accepts numpy arrays only."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from cryoforge.errors import InputFileError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays allowed)")


def load_array_pickle(path: str | Path) -> Any:
    """Load a pickle holding only numpy arrays (or tuples/lists of them).

    Raises
    ------
    InputFileError
        If the file is missing, corrupt, or contains anything but numpy arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "file not found")
    try:
        obj = _ArrayOnlyUnpickler(io.BytesIO(path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as exc:
        raise InputFileError(path, f"not a numpy-only pickle ({exc})") from None
    items = obj if isinstance(obj, tuple | list) else (obj,)
    if not all(isinstance(x, np.ndarray) for x in items):
        raise InputFileError(path, "pickle holds something other than numpy arrays")
    return obj


def load_cryodrgn_poses(path: str | Path, box_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """cryoDRGN pose pickle → rotations ``(N, 3, 3)`` and shifts in pixels ``(N, 2)`` (or None).

    cryoDRGN stores translations in fractions of the box; they are multiplied by ``box_size``.
    """
    obj = load_array_pickle(path)
    if isinstance(obj, np.ndarray):
        rot, trans = obj, None
    else:
        rot, trans = obj[0], (obj[1] if len(obj) > 1 else None)
    if rot.ndim != 3 or rot.shape[1:] != (3, 3):
        raise InputFileError(path, f"expected (N, 3, 3) rotations, got {rot.shape}", "rot")
    if trans is not None:
        if trans.shape != (rot.shape[0], 2):
            raise InputFileError(
                path, f"expected ({rot.shape[0]}, 2) translations, got {trans.shape}", "trans"
            )
        trans = trans.astype(np.float64) * box_size
    return rot.astype(np.float64), trans


CTF_COLUMNS = (
    "box_size_px",
    "pixel_size_A",
    "defocusU_A",
    "defocusV_A",
    "defocus_angle_deg",
    "voltage_kV",
    "Cs_mm",
    "amplitude_contrast",
    "phase_shift_deg",
)


def load_cryodrgn_ctf(path: str | Path) -> np.ndarray:
    """cryoDRGN CTF pickle → ``(N, 9)`` array with columns :data:`CTF_COLUMNS`."""
    arr = load_array_pickle(path)
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.shape[1] != 9:
        raise InputFileError(path, f"expected an (N, 9) CTF array, got {getattr(arr, 'shape', type(arr))}")
    return arr.astype(np.float64)
