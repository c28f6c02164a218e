"""Built-in image-formation models."""

from cryoforge.hookspecs import hookimpl
from cryoforge.imaging.cryoai import CryoAIImaging


@hookimpl
def cryoforge_register_imaging() -> list[type]:
    return [CryoAIImaging]
