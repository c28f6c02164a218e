"""The gradient training loop of one stage (kind ``"gradient"``)."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from cryoforge.config import Options, TrainConfig
from cryoforge.engine.batches import make_batch
from cryoforge.engine.callbacks import StepInfo
from cryoforge.engine.context import RunContext
from cryoforge.engine.signals import stop_point
from cryoforge.engine.stages import register_runner, stage_options
from cryoforge.errors import TrainingDiverged
from cryoforge.schedules.base import Stage


class GradientOptions(Options):
    """Settings of a ``gradient`` stage (``Stage.options``)."""

    poses: Literal["encoder", "table"] = Field(
        "encoder",
        description="'encoder': the encoder predicts the poses (cryoAI); 'table': fit the volume "
        "to the pose table an earlier stage left (the encoder is not used)",
    )


def stage_budget(stage: Stage, tc: TrainConfig, n_batches: int) -> tuple[int, int | None]:
    """``(epochs, total_steps)`` of a stage; ``None`` fields take ``train.epochs``/``max_steps``.

    ``epochs == 0`` and ``total_steps is None`` leave only the time budget ``train.max_time_s``.
    """
    epochs = tc.epochs if stage.epochs is None else stage.epochs
    max_steps = tc.max_steps if stage.max_steps is None else stage.max_steps
    total = epochs * n_batches if epochs else None
    if max_steps is not None:
        total = min(total or max_steps, max_steps)
    return epochs, total


def stage_fraction(step: int, total_steps: int | None, elapsed_s: float, max_time_s: float | None) -> float:
    """How far a stage is, in [0, 1]: by steps when it has a step budget, else by time."""
    if total_steps:
        return step / max(total_steps - 1, 1)
    if max_time_s:
        return elapsed_s / max_time_s
    return 0.0


def _progress(ctx: RunContext, stage: Stage) -> dict[str, Any]:
    prog = ctx.stage_state(stage)
    for key, value in (("epoch", 0), ("batch", 0), ("step", 0), ("elapsed_s", 0.0)):
        prog.setdefault(key, value)
    return prog


def _model(ctx: RunContext) -> torch.nn.Module:
    if ctx.world == 1:
        return ctx.pipeline
    return torch.nn.parallel.DistributedDataParallel(
        ctx.pipeline,
        device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
        find_unused_parameters=True,
    )


@register_runner("gradient", options=GradientOptions)
def train_gradient(ctx: RunContext, stage: Stage) -> None:
    """Adam on the pipeline over the stage's budget, batches in a seeded order per epoch.

    Progress (``epoch``, ``batch``, ``step``, ``elapsed_s``) lives in ``ctx.stage_state(stage)``;
    a resumed stage continues at the same batch. The run's ``step``/``elapsed_s`` count on.

    Raises
    ------
    TrainingDiverged
        When the loss is not finite (the last checkpoint is left as it was).
    """
    tc, state, world, rank = ctx.config.train, ctx.state, ctx.world, ctx.rank
    opts = stage_options(stage)
    if opts.poses == "table" and ctx.poses is None:
        ctx.table_pose(ctx.index[:1])  # raises the one-line error
    if opts.poses == "encoder" and not tc.gt_poses:
        ctx.poses = None  # the encoder owns the poses from here on; an older table is stale
    prog = _progress(ctx, stage)
    ctx.use_encoder(stage.encoder)
    optimizer = ctx.take_optimizer(stage)
    model = _model(ctx)
    # at table poses, only the particles whose pose was found (a searched subset) are fitted
    index = ctx.table_index() if opts.poses == "table" else ctx.index
    n_batches = math.ceil(len(index) / (tc.batch_size * world))
    epochs, total_steps = stage_budget(stage, tc, n_batches)
    total_steps = ctx.cap_stage_steps(prog["step"], total_steps)

    def spent() -> bool:
        return (total_steps is not None and prog["step"] >= total_steps) or (
            tc.max_time_s is not None and state["elapsed_s"] >= tc.max_time_s
        )

    if spent() or (epochs and prog["epoch"] >= epochs):
        return
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if (tc.amp and ctx.device.type == "cuda")
        else nullcontext()
    )
    stage_t0 = ctx.clock.elapsed() - prog["elapsed_s"]
    images_seen, rate_t0 = 0, ctx.clock.elapsed()
    per_step = tc.batch_size * world
    while not (epochs and prog["epoch"] >= epochs):
        perm = np.random.default_rng(tc.seed + prog["epoch"]).permutation(index)
        for b in range(prog["batch"], n_batches):
            stop_point(ctx)  # the state resumes exactly here: batch b of this epoch is next
            chunk = perm[b * per_step : (b + 1) * per_step][rank::world]
            if len(chunk) == 0:
                continue
            batch = make_batch(ctx.source, chunk, ctx.device)
            band = stage.band_at(stage_fraction(prog["step"], total_steps, prog["elapsed_s"], tc.max_time_s))
            known = batch.pose if tc.gt_poses else None
            if opts.poses == "table":
                known = ctx.table_pose(chunk).to(ctx.device)
            with amp:
                out = model(batch, known, band)
            loss = out.loss
            if not torch.isfinite(loss):
                raise TrainingDiverged(_diverged(ctx, stage, float(loss.item()), prog["epoch"]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(ctx.pipeline.parameters(), tc.grad_clip)
            optimizer.step()
            state["step"] += 1
            prog["step"] += 1
            prog["batch"] = b + 1
            images_seen += len(chunk) * world
            state["elapsed_s"] = ctx.clock.elapsed()
            prog["elapsed_s"] = state["elapsed_s"] - stage_t0
            lv = float(loss.detach())
            logged = state["step"] % tc.log_every == 0 or state["step"] == 1
            if logged:
                ctx.result.history.append(
                    {"step": state["step"], "loss": lv, "elapsed_s": state["elapsed_s"]}
                )
            rate = images_seen / max(ctx.clock.elapsed() - rate_t0, 1e-9)
            info = StepInfo(
                stage, state["step"], prog["step"], total_steps, prog["epoch"], lv, rate, band, logged
            )
            ctx.emit("on_step", info)
            if spent():
                return
        prog["epoch"] += 1
        prog["batch"] = 0


def _diverged(ctx: RunContext, stage: Stage, value: float, epoch: int) -> str:
    kept = (
        f"the last good checkpoint is kept in {ctx.checkpoint_path}"
        if ctx.checkpoint_path.is_file()
        else "no checkpoint had been written yet"
    )
    return (
        f"loss became {value} at step {ctx.state['step']} (stage {stage.name!r}, epoch {epoch}); "
        f"{kept}; lower train.lr_* or check the input data"
    )
