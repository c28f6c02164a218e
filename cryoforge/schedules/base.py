"""The value a schedule is made of: a :class:`Stage`."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

BandEdge = Annotated[float, Field(gt=0, le=1)]


class Stage(BaseModel):
    """One stage of a schedule: which runner trains what, over which band, for how long.

    Attributes
    ----------
    name
        Unique within the schedule (checkpoints record each stage's progress under it).
    kind
        The engine runner that executes the stage (``"gradient"``: the gradient training loop).
    encoder
        Name of the pose estimator (an ``encoder`` component) for this stage; ``None`` means the
        run's configured encoder. Another encoder is built with its default options on first use
        and kept (trained state included) for later stages.
    band
        ``(start, end)`` frequency band as a fraction of Nyquist, widened linearly over the
        stage's steps. Gradient stages low-pass the predicted and observed images with a disk of
        that radius before the loss; ``1.0`` keeps the whole image (no filtering).
    max_steps, epochs
        The stage's budget; ``None`` takes ``train.max_steps`` / ``train.epochs``. The run's time
        budget ``train.max_time_s`` bounds every stage.
    options
        Settings for the stage's runner (runner-specific).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: str = Field(min_length=1, description="unique within the schedule")
    kind: str = Field(min_length=1, description="the engine runner: gradient, search, amortize, ...")
    encoder: str | None = Field(
        None, description="pose estimator of this stage (None: the configured encoder)"
    )
    band: tuple[BandEdge, BandEdge] = Field(
        (1.0, 1.0), description="(start, end) frequency band, fraction of Nyquist, widened over the stage"
    )
    max_steps: int | None = Field(None, ge=1, le=10**12, description="step budget (None: train.max_steps)")
    epochs: int | None = Field(None, ge=0, le=10**12, description="epoch budget (None: train.epochs)")
    options: dict[str, Any] = Field(default_factory=dict, description="settings of the stage's runner")

    def band_at(self, fraction: float) -> float:
        """The band edge (fraction of Nyquist) after ``fraction`` ∈ [0, 1] of the stage."""
        start, end = self.band
        return start + (end - start) * min(max(fraction, 0.0), 1.0)
