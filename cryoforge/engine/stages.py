"""Stages of a schedule: the runner of each ``Stage.kind``, validation, and running them in order.

A runner is a function ``runner(ctx: RunContext, stage: Stage) -> None`` that trains until the
stage's budget is spent, keeping its progress in ``ctx.stage_state(stage)`` so that a resumed run
continues the stage where the checkpoint left it. Register one with a decorator::

    @register_runner("search")
    def search(ctx: RunContext, stage: Stage) -> None: ...
"""

from __future__ import annotations

from collections.abc import Callable

from cryoforge.config import RunConfig
from cryoforge.engine.context import RunContext
from cryoforge.errors import ConfigError
from cryoforge.registry import Registry
from cryoforge.schedules.base import Stage
from cryoforge.types import BuildContext

Runner = Callable[[RunContext, Stage], None]

RUNNERS: dict[str, Runner] = {}
"""``Stage.kind`` → the function that executes stages of that kind."""


def register_runner(kind: str) -> Callable[[Runner], Runner]:
    """Decorator registering ``fn`` as the runner of stages of ``kind``.

    Raises
    ------
    ValueError
        If another function already runs ``kind``.
    """

    def register(fn: Runner) -> Runner:
        other = RUNNERS.get(kind)
        if other is not None and other is not fn:
            raise ValueError(f"stage kind {kind!r} is already run by {other.__module__}.{other.__qualname__}")
        RUNNERS[kind] = fn
        return fn

    return register


def check_stages(stages: list[Stage], schedule: str) -> None:
    """A schedule's stages are non-empty, uniquely named and of kinds some runner executes.

    Raises
    ------
    ConfigError
        Naming the schedule and the offending stage.
    """
    if not stages:
        raise ConfigError(f"schedule {schedule!r}: no stages")
    seen: set[str] = set()
    for s in stages:
        if not isinstance(s, Stage):
            raise ConfigError(f"schedule {schedule!r}: stages() must return Stage values, got {s!r}")
        if s.name in seen:
            raise ConfigError(f"schedule {schedule!r}: two stages are named {s.name!r}")
        seen.add(s.name)
        if s.kind not in RUNNERS:
            known = ", ".join(sorted(RUNNERS))
            raise ConfigError(
                f"schedule {schedule!r}: stage {s.name!r} has kind {s.kind!r}, which no runner executes "
                f"(known: {known})"
            )


def schedule_stages(config: RunConfig, registry: Registry, ctx: BuildContext | None = None) -> list[Stage]:
    """Build the configured schedule and return its checked stages."""
    schedule = registry.build("schedule", config.schedule.name, config.schedule.options, ctx)
    stages = list(schedule.stages())
    check_stages(stages, config.schedule.name)
    return stages


def run_stages(ctx: RunContext, stages: list[Stage]) -> None:
    """Run ``stages`` in order from ``ctx.state["stage"]``: completed stages are not rerun.

    SIGINT and SIGTERM stop the run at the next :func:`cryoforge.engine.signals.stop_point` of a
    stage loop (or between stages), checkpointed, with exit code ``128 + signal number``.
    """
    from cryoforge.engine.signals import handling, stop_point

    with handling():
        for i in range(ctx.state["stage"], len(stages)):
            stop_point(ctx)
            if ctx.steps_left() == 0:  # train.max_steps, the run's budget over all stages, is spent
                return
            stage = stages[i]
            ctx.state["stage"] = i
            ctx.emit("on_stage_start", stage)
            RUNNERS[stage.kind](ctx, stage)
            ctx.state["stage"] = i + 1
            ctx.emit("on_stage_end", stage)
        stop_point(ctx)
