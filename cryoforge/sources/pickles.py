"""cryoDRGN pose/CTF pickles, read with a restricted unpickler that accepts numpy arrays only."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from cryoforge.errors import InputFileError
from cryoforge.io.validate import check_finite, check_readable_file

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
    check_readable_file(path, "pickle file")
    try:
        obj = _ArrayOnlyUnpickler(io.BytesIO(path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, IndexError) as exc:
        why = str(exc) if isinstance(exc, pickle.UnpicklingError) else "truncated or corrupt"
        raise InputFileError(path, f"not a numpy-only pickle ({why})") from None
    except (MemoryError, RecursionError):
        raise InputFileError(path, "not a numpy-only pickle (corrupt)") from None
    items = obj if isinstance(obj, tuple | list) else (obj,)
    if not all(isinstance(x, np.ndarray) for x in items):
        raise InputFileError(path, "pickle holds something other than numpy arrays")
    for x in items:
        if x.dtype.kind not in "biuf":
            raise InputFileError(
                path, f"holds an array of dtype {x.dtype} ({x.dtype.kind!r}); need numbers", "dtype"
            )
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
    check_finite(path, "rot", rot)
    if trans is not None:
        if trans.shape != (rot.shape[0], 2):
            raise InputFileError(
                path, f"expected ({rot.shape[0]}, 2) translations, got {trans.shape}", "trans"
            )
        check_finite(path, "trans", trans)
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
    if len(arr) == 0:
        raise InputFileError(path, "no particles (0 rows)", "rows")
    for i, name in enumerate(CTF_COLUMNS):
        check_finite(path, name, arr[:, i], positive=name in ("box_size_px", "pixel_size_A"))
    return arr.astype(np.float64)
