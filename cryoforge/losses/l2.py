"""Plain L2 loss."""

from __future__ import annotations

import torch

from cryoforge.options import Options
from cryoforge.roles import Loss


class L2Loss(Loss):
    """Mean squared error between the predicted and the observed image."""

    name = "l2"
    views = ("identity",)

    class Options(Options):
        pass

    def reduce(self, errors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return errors[0].mean(), torch.zeros(errors.shape[1], dtype=torch.long, device=errors.device)
