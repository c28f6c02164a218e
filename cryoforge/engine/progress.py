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
from cryoforge.io.console_progress import hms, rich_bar
from cryoforge.schedules.base import Stage

log = logging.getLogger("cryoforge")


def progress_line(info: StepInfo, elapsed_s: float, left_s: float | None = None) -> str:
    """One plain progress line: stage, steps (of the budget), particles, loss, throughput, time
    left in the stage (``left_s``, when known) and training time."""
    budget = f"/{info.total_steps}" if info.total_steps else ""
    rate = f"{info.images_per_s:.0f} img/s, " if info.images_per_s > 0 else ""  # 0: not measured
    particles = ""
    if info.particles is not None:
        of = f"/{info.particles_total:,}" if info.particles_total else ""
        particles = f"particles {info.particles:,}{of}, "
    left = "" if left_s is None else f"stage left ~{hms(left_s)}, "
    return (
        f"{time.strftime('%Y-%m-%d %H:%M:%S')} stage {info.stage.name}: step {info.stage_step}{budget} "
        f"(run step {info.step}), {particles}loss {info.loss:.5g}, {rate}{left}training time {hms(elapsed_s)}"
    )


def particles_line(stage: str, what: str, done: int, total: int, left_s: float | None) -> str:
    """One plain line inside a long step: ``what`` (a search iteration, …), particles done of its
    total, and the time left in it when known."""
    left = "" if left_s is None else f", ~{hms(left_s)} left in it"
    return f"{time.strftime('%Y-%m-%d %H:%M:%S')} stage {stage}: {what}, particles {done:,}/{total:,}{left}"


class PassClock:
    """The time left in one pass over the particles (a search iteration, …) from its pace so far."""

    def __init__(self) -> None:
        self.key: tuple[str, int] | None = None
        self.t0 = 0.0
        self.done0 = 0

    def left_s(self, what: str, done: int, total: int) -> float | None:
        now = time.perf_counter()
        if self.key is None or self.key[0] != what or done <= self.key[1]:  # a new pass
            self.key, self.t0, self.done0 = (what, done), now, done
            return None
        self.key = (what, done)
        rate = (done - self.done0) / max(now - self.t0, 1e-9)
        return max(total - done, 0) / rate if rate > 0 else None


class StageClock:
    """The time left in a stage, from its steps so far in this process and its step budget."""

    def __init__(self) -> None:
        self.t0: float | None = None
        self.step0 = 0

    def start(self) -> None:
        self.t0 = None

    def left_s(self, info: StepInfo) -> float | None:
        """Seconds left at the stage's mean pace since its first step here (``None``: unknown)."""
        now = time.perf_counter()
        if self.t0 is None:  # the first step seen (a resumed stage starts part-way)
            self.t0, self.step0 = now, info.stage_step
            return None
        done = info.stage_step - self.step0
        if not info.total_steps or done <= 0:
            return None
        return (now - self.t0) / done * max(info.total_steps - info.stage_step, 0)


class ProgressCallback(Callback):
    """Logs every logging step and the final metrics to ``run.log``; shows progress when ``bar``.

    With ``bar`` on a terminal: a rich bar per stage. With ``bar`` when ``stream`` (stdout) is not a
    terminal: a plain line at most every ``every_s`` seconds (and at each stage's start and end and
    each export), flushed at once, never wrapped or cut.
    """

    def __init__(self, bar: bool, every_s: float = 30.0, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = rich_bar() if bar and terminal else None
        self.plain = bar and not terminal
        self.every_s = every_s
        self.last_line = -float("inf")
        self.last_info: StepInfo | None = None
        self.task: Any = None
        self.clock = StageClock()
        self.pass_clock = PassClock()
        self.stage_name = ""
        self.last_pass_log = time.perf_counter()
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
        self.clock.start()
        self.stage_name = stage.name

    def on_step(self, ctx: RunContext, info: StepInfo) -> None:
        if info.logged:
            log.info(
                "epoch %d step %d loss %.5f %.1f img/s", info.epoch, info.step, info.loss, info.images_per_s
            )
        self.last_info = info
        left = self.clock.left_s(info)
        if self.plain:
            now = time.perf_counter()
            if info.stage_step == 1 or now - self.last_line >= self.every_s:
                self._say(progress_line(info, ctx.state["elapsed_s"], left))
                self.last_line = now
        if self.bar is None:
            return
        if self.task is None:
            self.task = self.bar.add_task(info.stage.name, total=info.total_steps, info="")
        self.bar.update(self.task, total=info.total_steps)
        if info.logged:
            count = "" if info.particles is None else f"{info.particles:,} particles · "
            self.bar.update(self.task, info=f"{count}loss {info.loss:.4f} · {info.images_per_s:.0f} img/s")
        self.bar.update(self.task, completed=info.stage_step)

    def on_particles(self, ctx: RunContext, what: str, done: int, total: int) -> None:
        """Long steps (a search iteration over 100,000 particles takes minutes) show their own
        pace: a plain line every ``every_s`` (and in ``run.log`` at most once a minute), or the
        bar's text on a terminal."""
        left = self.pass_clock.left_s(what, done, total)
        now = time.perf_counter()
        line = particles_line(self.stage_name, what, done, total, left)
        if self.plain and now - self.last_line >= self.every_s:
            self._say(line)
            self.last_line = now
        if now - self.last_pass_log >= max(self.every_s, 60.0):
            log.info(line.split(" ", 2)[2])  # run.log has its own time stamps
            self.last_pass_log = now
        if self.bar is not None:
            if self.task is None:
                self.task = self.bar.add_task(self.stage_name, total=None, info="")
            tail = "" if left is None else f" · ~{hms(left)} left in it"
            self.bar.update(self.task, info=f"{what}: {done:,}/{total:,} particles{tail}")

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
