"""cryoSPARC ``.cs`` source."""

from __future__ import annotations

from pathlib import Path

from cryoforge.io.cryosparc import read_cs
from cryoforge.io.table import ParticleTable
from cryoforge.sources.base import StackOptions, StackSource


class CryosparcSource(StackSource):
    """cryoSPARC particle table (``.cs``); stacks from ``blob/path`` relative to ``datadir``.

    Set ``datadir`` to the cryoSPARC project folder when the stack paths are relative to it.
    """

    name = "cs"
    image_path_field = "blob/path"
    image_index_field = "blob/idx"

    class Options(StackOptions):
        pass

    def read_table(self, path: Path) -> ParticleTable:
        return read_cs(path)
