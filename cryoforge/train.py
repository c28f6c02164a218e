"""Backwards-compatible names of the training engine, which now lives in :mod:`cryoforge.engine`."""

from __future__ import annotations

from cryoforge.engine.batches import infer_poses, make_batch
from cryoforge.engine.build import build_pipeline, optimizer_factory
from cryoforge.engine.checkpoint import atomic_save, load_checkpoint
from cryoforge.engine.context import CHECKPOINT, RunResult
from cryoforge.engine.export import export
from cryoforge.engine.run import (
    combine_halves,
    distributed,
    pick_device,
    prepare,
    run,
    setup_logging,
    split_halves,
    train_one,
    write_index,
    write_run_files,
)

__all__ = [
    "CHECKPOINT",
    "RunResult",
    "atomic_save",
    "build_pipeline",
    "combine_halves",
    "distributed",
    "export",
    "infer_poses",
    "load_checkpoint",
    "make_batch",
    "optimizer_factory",
    "pick_device",
    "prepare",
    "run",
    "setup_logging",
    "split_halves",
    "train_one",
    "write_index",
    "write_run_files",
]
