"""Built-in sources: RELION ``.star``, cryoSPARC ``.cs``, bare ``.mrcs``."""

from cryoforge.hookspecs import hookimpl
from cryoforge.sources.cs import CryosparcSource
from cryoforge.sources.mrcs import MrcsSource
from cryoforge.sources.star import StarSource

SUFFIX_TO_SOURCE = {".star": "star", ".cs": "cs", ".mrcs": "mrcs", ".mrc": "mrcs"}


@hookimpl
def cryoforge_register_sources() -> list[type]:
    return [StarSource, CryosparcSource, MrcsSource]
