"""Built-in volume representations (Fourier space)."""

from cryoforge.hookspecs import hookimpl
from cryoforge.volumes.fouriernet import FourierNet


@hookimpl
def cryoforge_register_volumes() -> list[type]:
    return [FourierNet]
