"""MRC/MRCS reading (memory-mapped, validated) and writing (atomic, with voxel size)."""

from __future__ import annotations

import mmap
import warnings
from pathlib import Path

import mrcfile
import numpy as np

from cryoforge.errors import InputFileError
from cryoforge.io.atomic import atomic_path

_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}


def open_stack(path: str | Path) -> np.memmap:
    """Memory-map an MRC/MRCS image stack as ``(N, L, L)`` without reading it.

    Raises
    ------
    InputFileError
        Missing file, truncated data, unsupported mode (complex), or non-square images.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "stack file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mrc = mrcfile.mmap(path, mode="r", permissive=True)
    except (ValueError, OSError) as exc:
        raise InputFileError(path, f"not a readable MRC file ({exc})") from None
    h = mrc.header
    mode = int(h.mode)
    if mode not in _MODES:
        raise InputFileError(path, f"unsupported MRC mode {mode} (need real-valued 0, 1, 2, 6 or 12)", "mode")
    data = mrc.data
    nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
    if data is None:
        raise InputFileError(path, f"data truncated: header says {nx}×{ny}×{nz}", "nz")
    if nx != ny:
        raise InputFileError(path, f"images are not square ({nx}×{ny})", "nx/ny")
    expected = nx * ny * nz * np.dtype(_MODES[mode]).itemsize
    actual = path.stat().st_size - 1024 - int(h.nsymbt)
    if actual < expected:
        raise InputFileError(
            path, f"data truncated: header says {nz} images of {nx}×{ny}, file holds fewer", "nz"
        )
    if data.ndim == 2:
        data = data[None]
    advise_random(data)
    return data


def advise_random(stack: np.ndarray) -> None:
    """Tell the kernel a memory-mapped stack is read at random (no readahead). No-op elsewhere."""
    mm = getattr(stack, "_mmap", None)
    if mm is not None and hasattr(mmap, "MADV_RANDOM"):
        mm.madvise(mmap.MADV_RANDOM)


def release_pages(stack: np.ndarray) -> None:
    """Unmap the pages a batch touched from this process (they stay in the page cache).

    Without this, every image ever read stays resident in the process and its memory grows with
    the dataset over an epoch; with it, memory stays at one batch whatever the number of particles.
    """
    mm = getattr(stack, "_mmap", None)
    if mm is not None and hasattr(mmap, "MADV_DONTNEED"):
        mm.madvise(mmap.MADV_DONTNEED)


def read_voxel_size(path: str | Path) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
            return float(mrc.voxel_size.x)


def read_map(path: str | Path) -> tuple[np.ndarray, float]:
    """Read a cubic ``.mrc`` map as ``(L, L, L)`` float32 ``[z, y, x]`` and its voxel size in Å."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "map file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", permissive=True) as mrc:
                if mrc.data is None:
                    raise InputFileError(path, "data truncated", "nz")
                data = np.asarray(mrc.data, dtype=np.float32).copy()
                voxel = float(mrc.voxel_size.x)
    except ValueError as exc:
        raise InputFileError(path, f"not a readable MRC file ({exc})") from None
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise InputFileError(path, f"map must be a cube, got shape {data.shape}", "nx/ny/nz")
    if not np.isfinite(data).all():
        raise InputFileError(path, "map contains NaN or Inf", "data")
    return data, voxel


def write_mrc(path: str | Path, data: np.ndarray, voxel_size_angstrom: float, stack: bool = False) -> None:
    """Write a ``[z, y, x]`` volume (or a ``(N, L, L)`` stack when ``stack``) atomically.

    The origin is 0 and the voxel size is in the header, so ChimeraX opens it at the right scale.
    """
    with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(data, dtype=np.float32))
        if stack:
            mrc.set_image_stack()
        mrc.voxel_size = voxel_size_angstrom
        mrc.update_header_stats()
