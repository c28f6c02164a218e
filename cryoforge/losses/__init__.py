"""Built-in losses."""

from cryoforge.hookspecs import hookimpl
from cryoforge.losses.l2 import L2Loss
from cryoforge.losses.symmetrized import SymmetrizedLoss


@hookimpl
def cryoforge_register_losses() -> list[type]:
    return [L2Loss, SymmetrizedLoss]
