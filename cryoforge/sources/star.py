"""RELION STAR source."""

from __future__ import annotations

from pathlib import Path

from cryoforge.io.star import read_star
from cryoforge.io.table import ParticleTable
from cryoforge.sources.base import StackOptions, StackSource


class StarSource(StackSource):
    """RELION 3.0 / 3.1 / 5 ``.star`` file with ``index@stack.mrcs`` image references.

    CTF and optics come from the particle table or its ``data_optics`` block; known poses
    (``rlnAngleRot/Tilt/Psi``, ``rlnOriginX[Angst]``) are read when present.
    """

    name = "star"

    class Options(StackOptions):
        pass

    def read_table(self, path: Path) -> ParticleTable:
        return read_star(path)
