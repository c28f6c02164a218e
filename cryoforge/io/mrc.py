"""MRC/MRCS reading (memory-mapped, validated) and writing (atomic, with voxel size)."""

from __future__ import annotations

import math
import mmap
import warnings
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import mrcfile.utils
import numpy as np

from cryoforge.errors import InputFileError
from cryoforge.io.atomic import atomic_path
from cryoforge.io.validate import check_readable_file

_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}


@dataclass(frozen=True)
class StackInfo:
    """A validated MRC/MRCS header: what is needed to memory-map the images later.

    Reading it holds no file open, so thousands of stacks can be checked up front.
    """

    path: Path
    count: int
    size: int
    dtype: np.dtype
    offset: int
    voxel_size_angstrom: float
    space_group: int = 0


def stack_info(path: str | Path) -> StackInfo:
    """Read and check the header of an MRC/MRCS image stack (no file stays open).

    Raises
    ------
    InputFileError
        Missing or unreadable file, not MRC, unsupported mode (complex), non-square images,
        no images, or truncated data. Messages never quote the file's bytes.
    """
    path = Path(path)
    check_readable_file(path, "stack file")
    size = path.stat().st_size
    if size < 1024:
        raise InputFileError(path, f"too short for an MRC header ({size} bytes, need 1024)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
                h = mrc.header
                mode, nsymbt, ispg = int(h.mode), int(h.nsymbt), int(h.ispg)
                nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
                voxel = float(mrc.voxel_size.x)
                dtype = mrcfile.utils.data_dtype_from_header(h) if mode in _MODES else None
    except (ValueError, OSError):  # mrcfile's text may quote header bytes: say it plainly
        raise InputFileError(path, "not a readable MRC file (its header is not MRC's)") from None
    if dtype is None and not 0 <= mode < 256:  # not a mode at all: the header is not MRC's
        raise InputFileError(path, "not a readable MRC file (its header is not MRC's)", "mode")
    if dtype is None:
        raise InputFileError(path, f"unsupported MRC mode {mode} (need real-valued 0, 1, 2, 6 or 12)", "mode")
    if nz <= 0:
        raise InputFileError(path, f"no images in the stack (nz = {nz})", "nz")
    if nx <= 0 or nx != ny:
        raise InputFileError(path, f"images are not square ({nx}×{ny})", "nx/ny")
    offset = 1024 + max(nsymbt, 0)
    if size - offset < nx * ny * nz * dtype.itemsize:
        raise InputFileError(
            path, f"data truncated: header says {nz} images of {nx}×{ny}, file holds fewer", "nz"
        )
    return StackInfo(path, nz, nx, dtype, offset, voxel if np.isfinite(voxel) else 0.0, ispg)


def map_stack(info: StackInfo) -> np.memmap:
    """Memory-map the images of a checked stack as ``(N, L, L)`` (one file descriptor, held by
    the map until its last reference is dropped)."""
    data = np.memmap(
        info.path, dtype=info.dtype, mode="r", offset=info.offset, shape=(info.count, info.size, info.size)
    )
    advise_random(data)
    return data


def open_stack(path: str | Path) -> np.memmap:
    """Memory-map an MRC/MRCS image stack as ``(N, L, L)`` without reading it.

    Raises
    ------
    InputFileError
        See :func:`stack_info`.
    """
    return map_stack(stack_info(path))


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
    """The header's voxel size in Å (0 when unset or not finite)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
            v = float(mrc.voxel_size.x)
    return v if np.isfinite(v) and v > 0 else 0.0


def read_map(path: str | Path) -> tuple[np.ndarray, float]:
    """Read a cubic ``.mrc`` map as ``(L, L, L)`` float32 ``[z, y, x]`` and its voxel size in Å."""
    path = Path(path)
    check_readable_file(path, "map file")
    if path.stat().st_size < 1024:
        raise InputFileError(path, f"too short for an MRC header ({path.stat().st_size} bytes, need 1024)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", permissive=True) as mrc:
                if mrc.data is None:
                    raise InputFileError(
                        path, "not a readable MRC file (invalid header, or data truncated)", "nz"
                    )
                data = np.asarray(mrc.data, dtype=np.float32).copy()
                voxel = float(mrc.voxel_size.x)
    except (ValueError, OSError):  # mrcfile's text may quote header bytes: say it plainly
        raise InputFileError(
            path, "not a readable MRC file (its header is not MRC's, or data are missing)"
        ) from None
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise InputFileError(path, f"map must be a cube, got shape {data.shape}", "nx/ny/nz")
    if not np.isfinite(data).all():
        raise InputFileError(path, "map contains NaN or Inf", "data")
    return data, voxel


def check_same_grid(
    path: str | Path,
    shape: tuple[int, ...],
    voxel_angstrom: float,
    ref_path: str | Path,
    ref_shape: tuple[int, ...],
    ref_voxel_angstrom: float,
    field: str = "voxel size",
) -> None:
    """Two maps compared voxel by voxel have the same shape and the same, known voxel size.

    Raises
    ------
    InputFileError
        Naming ``path``, with both shapes or both voxel sizes (a voxel size of 0 is unknown).
    """
    shape, ref_shape = tuple(int(x) for x in shape), tuple(int(x) for x in ref_shape)
    if shape != ref_shape:
        raise InputFileError(
            path,
            f"shape {shape} differs from {ref_shape} of {ref_path}: the maps cannot be compared "
            "voxel by voxel (resample one onto the other's grid)",
            "nx/ny/nz",
        )
    for p, v in ((path, voxel_angstrom), (ref_path, ref_voxel_angstrom)):
        if not (math.isfinite(v) and v > 0):
            raise InputFileError(
                p, f"voxel size {v:g} Å in the header: unknown, so resolutions in Å cannot be given", field
            )
    if not math.isclose(voxel_angstrom, ref_voxel_angstrom, rel_tol=1e-3):
        raise InputFileError(
            path,
            f"voxel size {voxel_angstrom:.4g} Å differs from {ref_voxel_angstrom:.4g} Å of {ref_path}: "
            "the maps cannot be compared (resample one onto the other's grid)",
            field,
        )


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
