"""Stages of a schedule: the runner of each ``Stage.kind``, validation, and running them in order.

A runner is a function ``runner(ctx: RunContext, stage: Stage) -> None`` that trains until the
stage's budget is spent, keeping its progress in ``ctx.stage_state(stage)`` so that a resumed run
continues the stage where the checkpoint left it. Register one with a decorator, naming the model
of its ``Stage.options``::

    @register_runner("search", options=SearchOptions)
    def search(ctx: RunContext, stage: Stage) -> None: ...

Every stage of a run is checked before the run touches its folder (:func:`check_stages`): its
kind has a runner, its encoder exists, and its options validate against the runner's model. A
runner reads them with :func:`stage_options`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from cryoforge.config import RunConfig
from cryoforge.engine.context import RunContext
from cryoforge.errors import ConfigError, PluginError
from cryoforge.options import format_validation_error
from cryoforge.registry import Registry
from cryoforge.schedules.base import Stage
from cryoforge.types import BuildContext

Runner = Callable[[RunContext, Stage], None]

RUNNERS: dict[str, Runner] = {}
"""``Stage.kind`` → the function that executes stages of that kind."""

STAGE_OPTIONS: dict[str, type[BaseModel]] = {}
"""``Stage.kind`` → the model its ``Stage.options`` validate against (checked before a run starts)."""


def register_runner(kind: str, options: type[BaseModel] | None = None) -> Callable[[Runner], Runner]:
    """Decorator registering ``fn`` as the runner of stages of ``kind``, whose ``Stage.options``
    follow the model ``options`` (see :func:`register_stage_options`).

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
        if options is not None:
            register_stage_options(kind, options)
        return fn

    return register


def register_stage_options(kind: str, options: type[BaseModel]) -> None:
    """Declare the model of the ``Stage.options`` of stages of ``kind``: every stage of that kind
    is validated against it before a run starts (and before ``--overwrite`` removes anything)."""
    STAGE_OPTIONS[kind] = options


def stage_options(stage: Stage) -> Any:
    """``stage.options`` validated against its kind's model (a plain dict when none is declared).

    Raises
    ------
    ConfigError
        Naming the stage and the option, e.g. ``stage 'amortize': options.bogus: unknown option``.
    """
    model = STAGE_OPTIONS.get(stage.kind)
    if model is None:
        return dict(stage.options)
    try:
        return model.model_validate(stage.options)
    except ValidationError as exc:
        raise ConfigError(f"stage {stage.name!r}: {format_validation_error(exc, 'options')}") from None


def check_stages(stages: list[Stage], schedule: str, registry: Registry | None = None) -> None:
    """A schedule's stages are non-empty, uniquely named, of kinds some runner executes, with
    options their runner accepts and (with ``registry``) encoders that exist.

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
        try:
            stage_options(s)
            if registry is not None and s.encoder is not None:
                registry.get("encoder", s.encoder)
        except (ConfigError, PluginError) as exc:
            raise ConfigError(f"schedule {schedule!r}: {exc}") from None


def schedule_stages(config: RunConfig, registry: Registry, ctx: BuildContext | None = None) -> list[Stage]:
    """Build the configured schedule and return its checked stages."""
    schedule = registry.build("schedule", config.schedule.name, config.schedule.options, ctx)
    stages = list(schedule.stages())
    check_stages(stages, config.schedule.name, registry)
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
            t0 = time.perf_counter()
            try:
                RUNNERS[stage.kind](ctx, stage)
            finally:  # a stopped stage's time counts too; the state is checkpointed with it
                walls = ctx.state.setdefault("stage_wall_s", {})
                walls[stage.name] = walls.get(stage.name, 0.0) + time.perf_counter() - t0
            ctx.state["stage"] = i + 1
            ctx.emit("on_stage_end", stage)
        stop_point(ctx)
