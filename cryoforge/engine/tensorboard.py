"""TensorBoard: the loss and throughput at logging steps, a central slice of every exported map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryoforge.engine.callbacks import Callback, Exported, StepInfo
from cryoforge.engine.context import RunContext


def central_slice_image(vmap: torch.Tensor) -> np.ndarray:
    """``(1, L, L)`` central ``z`` slice of a map, scaled to [0, 1]."""
    vol = vmap.numpy()
    sl = vol[vol.shape[0] // 2]
    sl = (sl - sl.min()) / max(float(np.ptp(sl)), 1e-9)
    return sl[None]


class TensorBoardCallback(Callback):
    """Writes to ``RUN_DIR/tensorboard`` through ``torch.utils.tensorboard``."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    @classmethod
    def open(cls, run_dir: Path) -> TensorBoardCallback | None:
        """The callback, or ``None`` when TensorBoard is not installed."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return cls(SummaryWriter(str(run_dir / "tensorboard")))

    def on_step(self, ctx: RunContext, info: StepInfo) -> None:
        if info.logged:
            self.writer.add_scalar("loss", info.loss, info.step)
            self.writer.add_scalar("images_per_s", info.images_per_s, info.step)

    def on_export(self, ctx: RunContext, exported: Exported) -> None:
        self.writer.add_image("central_slice", central_slice_image(exported.map), ctx.state["step"])

    def close(self) -> None:
        self.writer.close()
