"""cryoAI's schedule: one gradient stage over the whole budget."""

from __future__ import annotations

from cryoforge.options import Options
from cryoforge.roles import Schedule
from cryoforge.schedules.base import Stage


class CryoAISchedule(Schedule):
    """cryoAI's recipe: a single gradient stage, full band, budget from ``train.*``."""

    name = "cryoai"

    class Options(Options):
        pass

    def stages(self) -> list[Stage]:
        return [Stage(name="train", kind="gradient")]
