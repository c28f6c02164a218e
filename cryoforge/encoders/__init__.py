"""Built-in encoders."""

from cryoforge.encoders.vgg import VGGEncoder
from cryoforge.hookspecs import hookimpl


@hookimpl
def cryoforge_register_encoders() -> list[type]:
    return [VGGEncoder]
