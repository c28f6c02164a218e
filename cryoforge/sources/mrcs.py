"""A bare ``.mrcs`` stack with CTF (and optionally poses) from separate files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import Field

from cryoforge.errors import InputFileError
from cryoforge.io.mrc import stack_info
from cryoforge.io.star import read_star
from cryoforge.io.table import CTF_FIELDS, ParticleTable
from cryoforge.sources.base import StackOptions, StackSource
from cryoforge.sources.pickles import load_cryodrgn_ctf, load_cryodrgn_poses

log = logging.getLogger("cryoforge")
NO_CTF_WARNING = "{path}: no CTF given (-o source.ctf FILE.pkl|.star): the images are treated as CTF-free"


class MrcsSource(StackSource):
    """A bare ``.mrcs`` stack; CTF from a cryoDRGN CTF pickle or a STAR file, poses optional.

    Without ``ctf`` the images are treated as CTF-free (the CTF is 1).
    """

    name = "mrcs"

    class Options(StackOptions):
        ctf: str | None = Field(None, description="cryoDRGN ctf .pkl or a .star with CTF columns")
        poses: str | None = Field(None, description="cryoDRGN pose .pkl (rot, trans)")
        pixel_size_angstrom: float | None = Field(None, gt=0, description="overrides the header")
        path_options: ClassVar[tuple[str, ...]] = (*StackOptions.path_options, "ctf", "poses")

    def read_table(self, path: Path) -> ParticleTable:
        info = stack_info(path)
        n, L = info.count, info.size
        if info.space_group == 1 and n == L and n > 1:  # RELION/mrcfile: 0 = image stack, 1 = volume
            raise InputFileError(
                path, f"a 3D map ({L}³, space group 1), not a stack of particle images", "ispg"
            )
        pixel = self.options.pixel_size_angstrom or info.voxel_size_angstrom
        names = np.array([f"{i + 1:06d}@{path.name}" for i in range(n)])
        ctf = {k: np.zeros(n) for k in CTF_FIELDS}
        if self.options.ctf:
            cpath = Path(self.options.ctf)
            if cpath.suffix == ".star":
                ctf_table = read_star(cpath)
                if not ctf_table.has_ctf:
                    raise InputFileError(cpath, "no defocus values", "rlnDefocusU")
                ctf = ctf_table.ctf
            else:
                arr = load_cryodrgn_ctf(cpath)
                for i, k in enumerate(CTF_FIELDS[:7]):
                    ctf[k] = arr[:, i + 2]
                ctf["bfactor_angstrom2"] = np.zeros(len(arr))
                if not self.options.pixel_size_angstrom:
                    pixel = float(np.median(arr[:, 1]))
            if len(ctf["defocus_u_angstrom"]) != n:
                raise InputFileError(
                    cpath, f"{len(ctf['defocus_u_angstrom'])} CTF rows for {n} images", "rows"
                )
        if not pixel > 0:
            raise InputFileError(
                path,
                "no pixel size: the MRC header says 0 Å/px and no CTF pickle gives one; "
                "set it with -o source.pixel_size_angstrom",
                "source.pixel_size_angstrom",
            )
        self.no_ctf = not self.options.ctf
        rot = shifts = None
        if self.options.poses:
            rot, trans = load_cryodrgn_poses(self.options.poses, L)
            if len(rot) != n:
                raise InputFileError(self.options.poses, f"{len(rot)} poses for {n} images", "rot")
            shifts = (trans if trans is not None else np.zeros((n, 2))) * pixel
        return ParticleTable(
            path=path,
            image_names=names,
            ctf=ctf,
            rotations=rot,
            shifts_angstrom=shifts,
            pixel_size_angstrom=pixel,
            box_size=L,
        )

    def __init__(self, options, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(options, ctx)
        if self.no_ctf:
            self.ctf = None
            log.warning(NO_CTF_WARNING.format(path=self.path))
