"""What a run shows while it trains: ``run.log`` lines, and a rich progress bar on a terminal or
plain, flushed progress lines at a steady interval when stdout is not one (SLURM, nohup)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

from cryoforge.engine.callbacks import Callback, Exported, StepInfo
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


def hms(seconds: float) -> str:
    """``3725.2`` → ``"1:02:05"``."""
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def progress_line(info: StepInfo, elapsed_s: float) -> str:
    """One plain progress line: stage, steps (of the budget), loss, throughput, training time."""
    budget = f"/{info.total_steps}" if info.total_steps else ""
    rate = f"{info.images_per_s:.0f} img/s, " if info.images_per_s > 0 else ""  # 0: not measured
    return (
        f"{time.strftime('%Y-%m-%d %H:%M:%S')} stage {info.stage.name}: step {info.stage_step}{budget} "
        f"(run step {info.step}), loss {info.loss:.5g}, {rate}training time {hms(elapsed_s)}"
    )


class ProgressCallback(Callback):
    """Logs every logging step and the final metrics to ``run.log``; shows progress when ``bar``.

    With ``bar`` on a terminal: a rich bar per stage. With ``bar`` when ``stream`` (stdout) is not a
    terminal: a plain line at most every ``every_s`` seconds (and at each stage's start and end and
    each export), flushed at once, never wrapped or cut.
    """

    def __init__(self, bar: bool, every_s: float = 30.0, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = _bar() if bar and terminal else None
        self.plain = bar and not terminal
        self.every_s = every_s
        self.last_line = -float("inf")
        self.last_info: StepInfo | None = None
        self.task: Any = None
        if self.bar is not None:
            self.bar.start()

    def _say(self, text: str) -> None:
        if self.plain:
            print(text, file=self.stream, flush=True)

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
        self._say(
            f"{time.strftime('%Y-%m-%d %H:%M:%S')} stage {stage.name} starts ({stage.kind}, {poses}) "
            f"in {ctx.run_dir}"
        )
        self.task = None
        self.last_info = None

    def on_step(self, ctx: RunContext, info: StepInfo) -> None:
        if info.logged:
            log.info(
                "epoch %d step %d loss %.5f %.1f img/s", info.epoch, info.step, info.loss, info.images_per_s
            )
        self.last_info = info
        if self.plain:
            now = time.perf_counter()
            if info.stage_step == 1 or now - self.last_line >= self.every_s:
                self._say(progress_line(info, ctx.state["elapsed_s"]))
                self.last_line = now
        if self.bar is None:
            return
        if self.task is None:
            self.task = self.bar.add_task(info.stage.name, total=info.total_steps, info="")
        if info.logged:
            self.bar.update(self.task, info=f"loss {info.loss:.4f} · {info.images_per_s:.0f} img/s")
        self.bar.update(self.task, completed=info.stage_step)

    def on_export(self, ctx: RunContext, exported: Exported) -> None:
        files = ", ".join(str(p) for p in (exported.map_path, exported.star_path) if p is not None)
        self._say(f"{time.strftime('%Y-%m-%d %H:%M:%S')} exported {files} at step {ctx.state['step']}")

    def on_stage_end(self, ctx: RunContext, stage: Stage) -> None:
        if self.last_info is not None and self.last_info.stage.name == stage.name:
            self._say(progress_line(self.last_info, ctx.state["elapsed_s"]) + " (stage done)")
            self.last_line = time.perf_counter()

    def on_run_end(self, ctx: RunContext) -> None:
        metrics = {k: v for k, v in ctx.result.metrics.items() if not k.startswith("_")}
        log.info("done: %s", json.dumps(metrics, default=float))
        self._say(
            f"{time.strftime('%Y-%m-%d %H:%M:%S')} done: {ctx.state['step']} steps, "
            f"training time {hms(ctx.state['elapsed_s'])}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
