"""Pose files in the input's own format: every input column kept, only poses and shifts new.

- a RELION ``.star`` input: the same file (its version, every optics group, every column) with
  new ``rlnAngleRot/Tilt/Psi`` and ``rlnOriginX/YAngst``; a RELION 3.0 input becomes 3.1;
- a cryoSPARC ``.cs`` input: a RELION 3.1 ``.star`` *and* a ``.cs`` next to it, the input's
  table with new ``alignments3D/pose`` and ``alignments3D/shift``;
- any other source: a RELION 3.1 ``.star`` from the source's table.

Image names are absolute (``index@/abs/stack.mrcs``), so the written star opens from any folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cryoforge.errors import InputFileError
from cryoforge.io.cs_overlay import cs_star_columns, cs_with_poses, read_cs_array, write_cs_array
from cryoforge.io.star import write_star
from cryoforge.io.star_document import overlay_poses, read_star_document, write_star_document
from cryoforge.io.table import CTF_FIELDS, ParticleTable
from cryoforge.roles import Source
from cryoforge.types import Pose


def pose_table(source: Source, index: np.ndarray, pose: Pose, path: Path) -> ParticleTable:
    """The particles ``index`` with their CTF and ``pose``, in the source's original box and pixels."""
    table = getattr(source, "table", None)  # stack-backed sources; any Source works without
    if table is not None:
        ctf = {k: v[index] for k, v in table.ctf.items()}
        pixel_sizes = None if table.pixel_sizes_angstrom is None else table.pixel_sizes_angstrom[index]
    elif source.ctf is not None:
        ctf = {k: getattr(source.ctf, k)[torch.as_tensor(index)].double().numpy() for k in CTF_FIELDS}
        pixel_sizes = None
    else:
        ctf = {k: np.zeros(len(index)) for k in CTF_FIELDS}
        pixel_sizes = None
    names = getattr(source, "absolute_image_names", None)
    return ParticleTable(
        path=path,
        image_names=names(index) if names is not None else None,
        ctf=ctf,
        rotations=pose.rotation.double().cpu().numpy(),
        shifts_angstrom=pose.shift_angstrom.double().cpu().numpy(),
        pixel_size_angstrom=getattr(source, "original_pixel_size_angstrom", source.pixel_size_angstrom),
        box_size=getattr(source, "original_size", source.image_size),
        pixel_sizes_angstrom=pixel_sizes,
        has_ctf=source.ctf is not None,
    )


def _input_rows(source: Source, index: np.ndarray, found: int, path: Path) -> np.ndarray:
    """Rows of the input file for the source's particles ``index``; checks the file is unchanged."""
    expected = getattr(source, "rows_in_file", found)
    if found != expected:
        raise InputFileError(path, f"holds {found} particles, {expected} when the run read it", "rows")
    return np.asarray(source.row_index)[index]


def write_pose_files(star_path: Path, source: Source, index: np.ndarray, pose: Pose) -> list[Path]:
    """Write the poses of the particles ``index`` of ``source`` to ``star_path`` (and a ``.cs``).

    Returns
    -------
    list[Path]
        The files written: the ``.star``, then the ``.cs`` for a cryoSPARC input.
    """
    index = np.asarray(index, dtype=np.int64)
    star_path = Path(star_path)
    rotations = pose.rotation.double().cpu().numpy()
    shifts = pose.shift_angstrom.double().cpu().numpy()
    in_path = getattr(source, "path", None)
    suffix = Path(in_path).suffix.lower() if in_path is not None and hasattr(source, "row_index") else ""
    names = getattr(source, "absolute_image_names", None)
    if suffix == ".star":
        doc = read_star_document(in_path)
        rows = _input_rows(source, index, len(doc.particles), Path(in_path))
        out = overlay_poses(
            doc,
            rows,
            rotations,
            shifts,
            image_names=names(index) if names is not None else None,
            pixel_size_angstrom=getattr(source, "original_pixel_size_angstrom", None),
            box_size=getattr(source, "original_size", None),
        )
        write_star_document(star_path, out)
        return [star_path]
    table = pose_table(source, index, pose, star_path)
    if suffix != ".cs":
        write_star(star_path, table)
        return [star_path]
    arr = read_cs_array(in_path)
    rows = _input_rows(source, index, len(arr), Path(in_path))
    table.extra.update(cs_star_columns(arr[rows]))  # micrograph, coordinates, half set
    write_star(star_path, table)
    cs_path = star_path.with_suffix(".cs")
    write_cs_array(cs_path, cs_with_poses(arr, rows, rotations, shifts))
    return [star_path, cs_path]
