"""The default schedule: global pose search, a volume fit to the found poses, then amortization."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from cryoforge.options import Options
from cryoforge.roles import Schedule
from cryoforge.schedules.base import Stage


class AbinitSchedule(Schedule):
    """Search → fit → amortize: solves the poses, then teaches them to the encoder.

    1. ``search`` (kind ``search``): soft-assignment global search over ~7,000 rotations on a
       16-px voxel map, band widened from 3 to 8 Fourier pixels, then local refinement at full
       size below the grid's spacing. Leaves a pose per particle (the pose table).
    2. ``fit`` (kind ``gradient``, ``poses = "table"``): the volume (``--volume``) is fitted to
       the images at the table's poses.
    3. ``amortize`` (kind ``amortize``): the encoder (``--encoder``) learns the table's poses
       (and those of fresh projections of the map), so ``cryoforge infer`` needs no search.

    Exported poses are the table's (refined per particle); the encoder is what ``infer`` uses.
    """

    name = "abinit"

    class Options(Options):
        search: dict[str, Any] = Field(
            default_factory=dict, description="options of the search stage (see docs/components.md)"
        )
        fit_steps: int = Field(300, ge=1, description="volume fit steps at the table's poses")
        amortize_steps: int = Field(6000, ge=0, description="encoder training steps (0: no amortization)")
        amortize: dict[str, Any] = Field(default_factory=dict, description="options of the amortize stage")

    def stages(self) -> list[Stage]:
        o = self.options
        stages = [
            Stage(name="search", kind="search", options=o.search),
            Stage(name="fit", kind="gradient", max_steps=o.fit_steps, options={"poses": "table"}),
        ]
        if o.amortize_steps:
            stages.append(
                Stage(name="amortize", kind="amortize", max_steps=o.amortize_steps, options=o.amortize)
            )
        return stages


class StagedSchedule(Schedule):
    """Stages declared in the config: a list of stage tables, schedule.options.stages, run in order."""

    name = "staged"

    class Options(Options):
        stages: list[Stage] = Field(
            default_factory=lambda: [Stage(name="train", kind="gradient")],
            description="the stages, each with name, kind, encoder, band, max_steps/epochs, options",
        )

    def stages(self) -> list[Stage]:
        return list(self.options.stages)
