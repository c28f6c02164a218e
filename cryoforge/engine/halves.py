"""Half sets trained in lockstep: both half maps exist at every export, and the half-map FSC is
measured there (``history.jsonl`` of the run folder, ``progress.png``, ``report.html``).

The two halves take turns: each trains until its training clock reaches the next multiple of
``train.export_every_s``, exports, checkpoints and pauses (:class:`PauseCallback`); the other half
then catches up to the same training time and the two maps are compared. A paused half continues
from its checkpoint exactly as ``--resume`` does, so the halves end as they would have trained one
after the other. With more than one process (``torchrun``) the halves train one after the other.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cryoforge.config import RunConfig
from cryoforge.engine.callbacks import Callback, StepInfo
from cryoforge.engine.checkpoint import save_checkpoint
from cryoforge.engine.context import RunContext, RunResult
from cryoforge.engine.export import export
from cryoforge.io.mrc import read_map, write_mrc
from cryoforge.metrics.alignment import align_map
from cryoforge.metrics.fsc import FSCReport, fsc_report
from cryoforge.metrics.plot import plot_fsc

log = logging.getLogger("cryoforge")


class Paused(Exception):
    """A training segment ended at its pause time (not an error: the run continues later)."""


class PauseCallback(Callback):
    """After the first step at or past ``at_s`` s of training: export, checkpoint, raise :class:`Paused`.

    Put it last, so that every other callback has seen the step.
    """

    def __init__(self, at_s: float) -> None:
        self.at_s = at_s

    def on_step(self, ctx: RunContext, info: StepInfo) -> None:
        if ctx.state["elapsed_s"] >= self.at_s:
            with ctx.clock.paused():
                export(ctx)
                save_checkpoint(ctx)
            raise Paused


def half_config(config: RunConfig, i: int) -> RunConfig:
    """Half ``i``'s config: independent halves have different seeds (weights, batch order)."""
    train = config.train.model_copy(update={"seed": config.train.seed + 1000 * (i + 1)})
    return config.model_copy(update={"train": train})


def _elapsed(half_dir: Path) -> float:
    from cryoforge.engine.checkpoint import load_checkpoint

    ck = half_dir / "checkpoint.pt"
    if not ck.is_file():
        return 0.0
    return float(load_checkpoint(ck)["state"].get("elapsed_s", 0.0))


def append_history(run_dir: Path, entry: dict[str, float]) -> None:
    """One line of ``run_dir/history.jsonl`` (non-finite numbers as ``null``)."""
    clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in entry.items()}
    with open(run_dir / "history.jsonl", "a") as fh:
        fh.write(json.dumps(clean) + "\n")


def halfmap_fsc(
    m1: torch.Tensor, m2: torch.Tensor, pixel_size_angstrom: float, same_frame: bool
) -> FSCReport:
    """FSC of half map 2, aligned onto half map 1 (both hands, rotation search unless
    ``same_frame``: fitted to the same known poses), with half map 1."""
    al = align_map(m2, m1, torch.eye(3), False) if same_frame else align_map(m2, m1, n_search=500)
    return fsc_report(m1, al.aligned, pixel_size_angstrom)


def train_halves(
    config: RunConfig,
    halves: list[np.ndarray],
    run_dir: Path,
    resume: bool,
    train: Callable[..., RunResult],
    rank: int,
    world: int,
) -> list[RunResult]:
    """Train both halves, in lockstep on one process; returns their results (half 1, half 2).

    ``train(config, index, half_dir, resume, pause_at_s)`` trains one half (``train_one``); it
    returns a result with ``paused`` set when it stopped at ``pause_at_s``.
    """
    dirs = [run_dir / f"half{i + 1}" for i in range(2)]
    every = config.train.export_every_s
    if world > 1:  # the pause is decided on rank 0 alone: no lockstep across processes
        return [train(half_config(config, i), halves[i], dirs[i], resume, None) for i in range(2)]
    start = min(_elapsed(d) for d in dirs) if resume else 0.0
    if not resume and rank == 0:  # a new run (or --overwrite): the half-map history starts afresh
        (run_dir / "history.jsonl").unlink(missing_ok=True)
    mark = every * (math.floor(start / every) + 1)
    results: list[RunResult | None] = [None, None]
    first = [True, True]

    def running(i: int) -> bool:
        return results[i] is None or results[i].paused

    while running(0) or running(1):
        for i in range(2):
            if not running(i):
                continue
            pause = mark if running(1 - i) else None  # alone, a half need not wait for the other
            results[i] = train(half_config(config, i), halves[i], dirs[i], resume or not first[i], pause)
            first[i] = False
        if rank == 0 and all(r is not None and r.paused for r in results):
            interim_halves(config, dirs, run_dir, mark, [r for r in results if r is not None])
        mark += every
    return [r for r in results if r is not None]


def interim_halves(
    config: RunConfig, dirs: list[Path], run_dir: Path, elapsed_s: float, results: list[RunResult]
) -> None:
    """Both halves paused at ``elapsed_s``: the half-map FSC there, the average map, the pictures."""
    from cryoforge.engine.pictures import HALF_KEY, write_halves_pictures

    (m1, px), (m2, _) = read_map(dirs[0] / "map.mrc"), read_map(dirs[1] / "map.mrc")
    m1t, m2t = torch.from_numpy(m1), torch.from_numpy(m2)
    rep = halfmap_fsc(m1t, m2t, px, same_frame=config.train.gt_poses)
    metrics = {"halfmap_" + k: v for k, v in rep.summary((0.5, 0.143)).items()}
    append_history(run_dir, {HALF_KEY: metrics[HALF_KEY], "elapsed_s": elapsed_s})
    log.info("half-map FSC at %.0f s of training: %s", elapsed_s, metrics["halfmap_resolution_0.143_text"])
    avg = ((m1t + m2t) / 2).numpy()  # the current map; the final one is aligned first (combine_halves)
    write_mrc(run_dir / "map.mrc", avg, px)
    if config.train.pictures:
        plot_fsc({"half 1 vs half 2": rep}, run_dir / "fsc_halves.png")
        write_halves_pictures(run_dir, metrics, avg, px, results, final=False)
