"""What the engine tells the outside while it trains: the :class:`Callback` hooks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cryoforge.schedules.base import Stage
from cryoforge.types import Pose

if TYPE_CHECKING:
    from cryoforge.engine.context import RunContext


@dataclass(frozen=True)
class StepInfo:
    """One optimizer step, as callbacks see it.

    Attributes
    ----------
    stage
        The running stage.
    step
        Optimizer steps of the whole run so far (this one included).
    stage_step
        Steps of this stage so far; ``total_steps`` is its budget (``None``: time or epochs only).
    epoch
        The stage's epoch (0-based).
    loss
        The step's loss.
    images_per_s
        Training throughput (all processes) since the stage started in this process.
    band
        The frequency band used, as a fraction of Nyquist.
    logged
        Whether this step is a logging step (every ``train.log_every`` steps, and the first).
    particles, particles_total
        Particles the stage has handled so far (a search counts each particle once per
        iteration) and will handle in all; ``None`` where the stage counts steps only.
    """

    stage: Stage
    step: int
    stage_step: int
    total_steps: int | None
    epoch: int
    loss: float
    images_per_s: float
    band: float
    logged: bool
    particles: int | None = None
    particles_total: int | None = None


@dataclass(frozen=True)
class Exported:
    """What an export wrote: the map ``(L, L, L)`` and, when available, a pose per particle."""

    map: torch.Tensor
    map_path: Path
    pose: Pose | None = None
    star_path: Path | None = None
    index: np.ndarray | None = None  # dataset positions of the pose rows (None: the run's index)


class Callback:
    """Base class of the engine's callbacks; every hook does nothing unless overridden.

    Callbacks run on the process of rank 0 only, in the order of ``RunContext.callbacks``.
    """

    def on_stage_start(self, ctx: RunContext, stage: Stage) -> None:
        """A stage begins (or resumes)."""

    def on_step(self, ctx: RunContext, info: StepInfo) -> None:
        """An optimizer step finished."""

    def on_particles(self, ctx: RunContext, what: str, done: int, total: int) -> None:
        """Inside a long step (a global search iteration, a local refinement, a full-size
        reconstruction): ``done`` of this process's ``total`` particles are through ``what``."""

    def on_export(self, ctx: RunContext, exported: Exported) -> None:
        """The map (and poses) were written."""

    def on_stage_end(self, ctx: RunContext, stage: Stage) -> None:
        """A stage finished; ``ctx.state["stage"]`` already points to the next one."""

    def on_run_end(self, ctx: RunContext) -> None:
        """Every stage finished (not called when training fails)."""

    def close(self) -> None:
        """Release resources; always called, also after an error."""
