"""The log lines of a run (``run.log``) and its rich progress bar."""

from __future__ import annotations

import json
import logging
from typing import Any

from cryoforge.engine.callbacks import Callback, StepInfo
from cryoforge.engine.context import RunContext
from cryoforge.schedules.base import Stage

log = logging.getLogger("cryoforge")


def _bar() -> Any:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        transient=False,
    )


class ProgressCallback(Callback):
    """Logs every logging step and the final metrics; shows a bar per stage when ``bar``."""

    def __init__(self, bar: bool) -> None:
        self.bar = _bar() if bar else None
        self.task: Any = None
        if self.bar is not None:
            self.bar.start()

    def on_stage_start(self, ctx: RunContext, stage: Stage) -> None:
        poses = (
            "known poses"
            if ctx.config.train.gt_poses
            else f"encoder {stage.encoder or ctx.config.encoder.name}"
        )
        log.info(
            "stage %d %r (%s, %s, band %.3g→%.3g of Nyquist)",
            ctx.state["stage"],
            stage.name,
            stage.kind,
            poses,
            *stage.band,
        )
        self.task = None

    def on_step(self, ctx: RunContext, info: StepInfo) -> None:
        if info.logged:
            log.info(
                "epoch %d step %d loss %.5f %.1f img/s", info.epoch, info.step, info.loss, info.images_per_s
            )
        if self.bar is None:
            return
        if self.task is None:
            self.task = self.bar.add_task(info.stage.name, total=info.total_steps, info="")
        if info.logged:
            self.bar.update(self.task, info=f"loss {info.loss:.4f} · {info.images_per_s:.0f} img/s")
        self.bar.update(self.task, completed=info.stage_step)

    def on_run_end(self, ctx: RunContext) -> None:
        metrics = {k: v for k, v in ctx.result.metrics.items() if not k.startswith("_")}
        log.info("done: %s", json.dumps(metrics, default=float))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
