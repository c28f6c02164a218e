"""cryoAI's symmetrized loss."""

from __future__ import annotations

import torch

from cryoforge.options import Options
from cryoforge.roles import Loss


class SymmetrizedLoss(Loss):
    """Per particle, the smaller L2 error of the image and of its copy rotated by π.

    The encoder sees both views; only the winner's error is kept, so gradients flow through it
    alone, and the reported pose is the winner's mapped back to the original image. This escapes
    the spurious minima where the map is mirror-symmetric about a plane (cryoAI, Levy et al. 2022).
    """

    name = "symmetrized"
    views = ("identity", "rot180")

    class Options(Options):
        pass

    def reduce(self, errors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        best, winner = errors.min(dim=0)
        return best.mean(), winner
