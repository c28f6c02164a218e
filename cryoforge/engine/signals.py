"""A scheduler's signals: SIGTERM and SIGINT stop a run at a step boundary, checkpointed.

While stages run (:func:`cryoforge.engine.stages.run_stages`), :func:`handling` replaces the
handlers of SIGINT (Ctrl-C) and SIGTERM (what SLURM sends at a time limit) by one that only
records the signal. Every stage loop calls :func:`stop_point` where its state can be resumed
exactly (between steps, batches or iterations): when a signal was recorded, it writes the
checkpoint and leaves with :class:`Interrupted`, a :class:`SystemExit` whose code is ``128 +
signal number`` (130 for Ctrl-C, 143 for SIGTERM), as a shell reports a process killed by that
signal. ``--resume`` then continues exactly where the run stopped.

A second signal while the first is handled stops at once (the last checkpoint is kept: checkpoint
writes are atomic). Outside :func:`handling` the process's own handlers apply.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryoforge.engine.context import RunContext

log = logging.getLogger("cryoforge")

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: int | None = None  # the signal recorded since handling() began, if any


class Interrupted(SystemExit):
    """The run stopped on a signal; exit code ``128 + signum``, no traceback (a SystemExit)."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


def stop_requested() -> int | None:
    """The number of the signal that asked the run to stop, or ``None``. Cheap: a global read."""
    return _received


def request_stop(signum: int = signal.SIGTERM) -> None:
    """Record ``signum`` as if it had been received (for tests and for embedding programs)."""
    global _received
    _received = int(signum)


def _agreed(ctx: RunContext, signum: int | None) -> int | None:
    """With several processes, every rank stops at the same boundary: the largest signal wins."""
    import torch
    import torch.distributed as dist

    if ctx.world == 1 or not dist.is_available() or not dist.is_initialized():
        return signum
    flag = torch.tensor([signum or 0], device=ctx.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


def stop_point(ctx: RunContext) -> None:
    """Call where the run's state (``ctx``) resumes exactly: on a recorded signal, checkpoint and exit.

    Raises
    ------
    Interrupted
        When SIGINT or SIGTERM arrived: after ``checkpoint.pt`` was written (rank 0).
    """
    signum = _agreed(ctx, _received)
    if signum is None:
        return
    from cryoforge.engine.checkpoint import save_checkpoint

    if ctx.rank == 0:
        save_checkpoint(ctx)
        name = signal.Signals(signum).name
        message = (
            f"{name}: stopped at step {ctx.state['step']}, checkpoint saved in {ctx.checkpoint_path}; "
            "continue with --resume"
        )
        log.warning(message)
        print(f"Interrupted: {message}", file=sys.stderr, flush=True)
    raise Interrupted(signum)


def _record(signum: int, frame: FrameType | None) -> None:
    global _received
    if _received is not None:  # a second signal: stop now, keeping the last checkpoint
        raise Interrupted(signum)
    _received = signum


@contextmanager
def handling() -> Iterator[None]:
    """Record SIGINT and SIGTERM instead of dying while the body runs (main thread only)."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _received = None
    for s in SIGNALS:
        signal.signal(s, _record)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _received = None
