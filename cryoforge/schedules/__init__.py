"""Built-in schedules."""

from cryoforge.hookspecs import hookimpl
from cryoforge.schedules.abinit import AbinitSchedule, StagedSchedule
from cryoforge.schedules.cryoai import CryoAISchedule


@hookimpl
def cryoforge_register_schedules() -> list[type]:
    return [CryoAISchedule, AbinitSchedule, StagedSchedule]
