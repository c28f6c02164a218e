"""Checkpoints: atomic writes, safe loading, and the callback that writes them periodically.

A checkpoint (``checkpoint.pt``) holds

- ``model``: the pipeline's state dict;
- ``optimizer``, ``optimizer_stage``: the latest stage's optimizer state and that stage's name;
- ``state``: :attr:`RunContext.state` (current stage index, run step and time, the pipeline's
  encoder, each stage's own progress);
- ``history``: ``[step, loss, elapsed_s]`` rows; ``config``: the run's config as JSON;
- when present, ``poses`` (the shared pose table) and ``encoders`` (state dicts of stage
  encoders not in the pipeline at that moment).
"""

from __future__ import annotations

import logging
import pickle
import time
from pathlib import Path
from typing import Any

import torch

from cryoforge.engine.callbacks import Callback, StepInfo
from cryoforge.engine.context import RunContext
from cryoforge.io.atomic import atomic_path
from cryoforge.schedules.base import Stage
from cryoforge.types import Pose

log = logging.getLogger("cryoforge")


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file renamed over ``path`` (never a half-written file)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary unpickling).

    Raises
    ------
    InputFileError
        One line for an empty, truncated, garbage or object-holding file (never torch's advice
        to retry with ``weights_only=False``, which would run the file's code).
    """
    from cryoforge.errors import InputFileError
    from cryoforge.io.validate import check_readable_file

    path = Path(path)
    check_readable_file(path, "checkpoint")
    if path.stat().st_size == 0:
        raise InputFileError(path, "empty checkpoint (0 bytes): the run was killed while writing it?")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        why = "truncated or not a checkpoint"
        if "GLOBAL" in text or "global" in text.lower().split("weights_only")[-1]:
            why = "it holds Python objects other than tensors; refusing to run them"
        raise InputFileError(path, f"cannot load the checkpoint ({why})") from None
    except Exception:  # torch raises RuntimeError, EOFError, ValueError... for corrupt files
        raise InputFileError(path, "cannot load the checkpoint (truncated or not a checkpoint)") from None
    if not isinstance(ck, dict):
        raise InputFileError(path, "not a cryoforge checkpoint (no dictionary of weights)")
    return ck


def _first_not_finite(tensors: dict[str, Any]) -> str | None:
    """The name of the first floating-point tensor holding NaN or Inf, or ``None``."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def save_checkpoint(ctx: RunContext) -> None:
    """Write ``ctx``'s model, optimizer, state and history to ``ctx.checkpoint_path``.

    Raises
    ------
    TrainingDiverged
        When a weight or the pose table holds NaN or Inf: the last checkpoint written stays the
        last good one (a NaN checkpoint is never written).
    """
    from cryoforge.errors import TrainingDiverged

    tensors = {f"weight {k}": v for k, v in ctx.pipeline.state_dict().items()}
    for name, enc in ctx.spare_encoders().items():
        tensors.update({f"encoder {name} weight {k}": v for k, v in enc.state_dict().items()})
    if ctx.poses is not None:
        tensors.update(poses=ctx.poses.rotation, shifts=ctx.poses.shift_angstrom)
    bad = _first_not_finite(tensors)
    if bad is not None:
        kept = (
            f"the last good checkpoint is kept in {ctx.checkpoint_path}"
            if ctx.checkpoint_path.is_file()
            else "no checkpoint had been written yet"
        )
        raise TrainingDiverged(
            f"{bad} became NaN or Inf by step {ctx.state['step']}; {kept}; "
            "lower train.lr_* or check the input data"
        )
    ck: dict[str, Any] = {
        "model": ctx.pipeline.state_dict(),
        "optimizer": ctx.optimizer.state_dict() if ctx.optimizer is not None else {},
        "optimizer_stage": ctx.optimizer_stage,
        "state": ctx.state,
        "history": [[h["step"], h["loss"], h["elapsed_s"]] for h in ctx.result.history],
        "config": ctx.config.model_dump_json(),
    }
    if ctx.poses is not None:
        ck["poses"] = {"rotation": ctx.poses.rotation, "shift_angstrom": ctx.poses.shift_angstrom}
    spare = ctx.spare_encoders()
    if spare:
        ck["encoders"] = {name: enc.state_dict() for name, enc in spare.items()}
    atomic_save(ck, ctx.checkpoint_path)


def restore(ctx: RunContext, ck: dict[str, Any]) -> None:
    """Continue from checkpoint ``ck``: model, encoders, state, history, poses, optimizer.

    Checkpoints written before schedules existed (a single stage) are read as stage 0.
    """
    state = ck["state"]
    if "stages" not in state:  # a single-stage checkpoint of an earlier version
        progress = {k: state[k] for k in ("epoch", "batch", "step", "elapsed_s")}
        state = {"stage": 0, "step": state["step"], "elapsed_s": state["elapsed_s"], "encoder": None}
        state["stages"] = {"train": progress}
    ctx.use_encoder(state["encoder"])
    ctx.pipeline.load_state_dict(ck["model"])
    for name, sd in ck.get("encoders", {}).items():
        if name not in ctx.encoders:
            ctx.encoders[name] = ctx.build_encoder(name)
        ctx.encoders[name].load_state_dict(sd)
    ctx.state = state
    if ck["optimizer"]:  # whose it is: a checkpoint at a stage's end holds that stage's
        ctx.resumed_optimizer = (ck.get("optimizer_stage", "train"), ck["optimizer"])
    if "poses" in ck:
        ctx.poses = Pose(ck["poses"]["rotation"], ck["poses"]["shift_angstrom"])
    ctx.result.history = [
        dict(zip(("step", "loss", "elapsed_s"), h, strict=True)) for h in ck.get("history", [])
    ]


class CheckpointCallback(Callback):
    """Checkpoints every ``every_steps`` steps (optional), every ``every_s`` seconds, at stage ends."""

    def __init__(self, every_steps: int | None, every_s: float) -> None:
        self.every_steps, self.every_s = every_steps, every_s
        self.last = time.perf_counter()

    def on_step(self, ctx: RunContext, info: StepInfo) -> None:
        now = time.perf_counter()
        due = self.every_steps and info.step % self.every_steps == 0
        if due or now - self.last > self.every_s:
            save_checkpoint(ctx)
            self.last = now

    def on_stage_end(self, ctx: RunContext, stage: Stage) -> None:
        save_checkpoint(ctx)
        self.last = time.perf_counter()
