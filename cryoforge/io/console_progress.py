"""Progress a user can read: a rich bar on a terminal, or plain flushed lines for a scheduler's log.

Used by passes outside a run (``cryoforge infer``, a streamed ``simulate``) and by the run's own
progress callback (:mod:`cryoforge.engine.progress`).
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def rich_bar() -> Any:
    """A rich progress bar: description, bar, count, info, elapsed and time left."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        transient=False,
    )


def hms(seconds: float) -> str:
    """``3725.2`` → ``"1:02:05"``."""
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class ParticleProgress:
    """Particles done and the time left in a pass outside a run (``cryoforge infer``).

    A rich bar when ``stream`` (default stderr) is a terminal; otherwise a plain, flushed line at
    most every ``every_s`` seconds and at the end, for logs under a scheduler. With ``enabled``
    false it shows nothing (callers keep one code path)::

        2026-12-07 02:30:00 infer: particles 120,000/1,000,000 (12.0 %), 512 img/s, left ~0:28:38
    """

    def __init__(
        self,
        label: str,
        total: int,
        stream: TextIO | None = None,
        every_s: float = 30.0,
        enabled: bool = True,
    ) -> None:
        self.label, self.total, self.every_s, self.enabled = label, total, every_s, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.t0 = time.perf_counter()
        self.last_line = self.t0
        self.done = 0
        self.bar = None
        if enabled and bool(getattr(self.stream, "isatty", lambda: False)()):
            from rich.console import Console

            self.bar = rich_bar()
            self.bar.console = Console(file=self.stream)
            self.bar.start()
            self.task = self.bar.add_task(label, total=total, info="particles")

    def line(self) -> str:
        """The plain progress line for the particles done so far."""
        elapsed = time.perf_counter() - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = f", left ~{hms((self.total - self.done) / rate)}" if rate > 0 else ""
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{time.strftime('%Y-%m-%d %H:%M:%S')} {self.label}: particles {self.done:,}/{self.total:,} "
            f"({pct:.1f} %), {rate:.0f} img/s{left}"
        )

    def update(self, done: int) -> None:
        """``done`` particles finished so far."""
        self.done = done
        if self.bar is not None:
            self.bar.update(self.task, completed=done)
            return
        now = time.perf_counter()
        if self.enabled and now - self.last_line >= self.every_s:
            print(self.line(), file=self.stream, flush=True)
            self.last_line = now

    def close(self) -> None:
        """End the bar, or write the last line."""
        if self.bar is not None:
            self.bar.stop()
        elif self.enabled:
            print(self.line(), file=self.stream, flush=True)
