"""Atomic models → electrostatic-potential maps with gemmi's electron scattering factors."""

from __future__ import annotations

import gzip
import tempfile
from importlib.resources import files
from pathlib import Path

import numpy as np

from cryoforge.errors import InputFileError


def demo_structure_path() -> Path:
    """The built-in demo structure: adenylate kinase, open state (PDB 4AKE), gzipped PDB."""
    return Path(str(files("cryoforge") / "data" / "adk_open.pdb.gz"))


def read_structure(path: str | Path):
    import gemmi

    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "structure file not found")
    try:
        if path.suffix == ".gz":
            with tempfile.TemporaryDirectory() as tmp:
                inner = Path(tmp) / path.stem
                try:
                    inner.write_bytes(gzip.decompress(path.read_bytes()))
                except OSError as exc:  # a full disk: name the file (the command reports it)
                    raise OSError(exc.errno, exc.strerror, str(inner)) from None
                st = gemmi.read_structure(str(inner))
        else:
            st = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError) as exc:
        raise InputFileError(path, f"cannot read atomic model ({exc})") from None
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise InputFileError(path, "no atoms in the first model", "ATOM")
    st.remove_hydrogens()
    return st


def atomic_model_to_map(path: str | Path, box_size: int, pixel_size_angstrom: float) -> np.ndarray:
    """Scattering potential of a model in a cubic box, centred on the atoms' mean position.

    Parameters
    ----------
    path
        ``.pdb``/``.cif`` (optionally ``.gz``).
    box_size
        L, voxels per side.
    pixel_size_angstrom
        Voxel size in Å.

    Returns
    -------
    ``(L, L, L)`` float32 map ``[z, y, x]`` (gemmi ``DensityCalculatorE``, resolution 2 px).
    """
    import gemmi

    st = read_structure(path)
    model = st[0]
    xyz = np.array([[a.pos.x, a.pos.y, a.pos.z] for ch in model for res in ch for a in res])
    extent = float(np.ptp(xyz, axis=0).max())
    side = box_size * pixel_size_angstrom
    if extent > side:
        raise InputFileError(
            path,
            f"model spans {extent:.0f} Å but the box is only {side:.0f} Å (raise --box-size or --pixel-size)",
            "box",
        )
    shift = gemmi.Position(*(np.full(3, (box_size // 2) * pixel_size_angstrom) - xyz.mean(0)))
    for ch in model:
        for res in ch:
            for atom in res:
                atom.pos = atom.pos + shift
    dc = gemmi.DensityCalculatorE()
    dc.d_min = 2 * pixel_size_angstrom
    dc.grid.unit_cell = gemmi.UnitCell(side, side, side, 90, 90, 90)
    dc.grid.spacegroup = gemmi.SpaceGroup("P 1")
    dc.grid.set_size(box_size, box_size, box_size)
    dc.grid.fill(0)
    dc.add_model_density_to_grid(model)
    dc.grid.symmetrize_sum()
    arr = np.array(dc.grid, copy=True)  # indexed [x, y, z]
    return np.ascontiguousarray(arr.transpose(2, 1, 0)).astype(np.float32)
