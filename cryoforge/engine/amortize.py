"""The amortization stage (kind ``"amortize"``): teach the encoder the poses a search found.

cryoAI's point is an encoder that gives every particle's pose in one pass. A search stage finds
the poses of the training particles; this stage trains the encoder to predict them, so that
``cryoforge infer`` on new particles of the same molecule needs no search. The encoder is trained
on every view the loss declares (for the symmetrized loss: the image and its copy rotated by π,
whose target is the table pose mapped by the view), with the chordal distance
``‖R_pred − R_table‖_F`` (``2√2·sin(θ/2)``, nearly proportional to the angle θ; its square, the
earlier default, ended 0.4° worse on fresh particles) plus the squared origin error in pixels.

Training images are the particles themselves and, with ``synthetic_fraction > 0``, fresh
projections of the current map at random poses with the CTFs of random particles and white noise
at the data's estimated SNR: unlimited examples, so the encoder generalises instead of memorising.
Two moves multiply the distinct examples (both on by default; measured in ``docs/validation.md``,
*The amortized encoder*): each image is turned or mirrored by a random symmetry of the pixel grid
(``grid_augment``; its pose moves exactly with it), and a share ``recentre`` of them is translated
so that the particle sits near the box centre. Inference then reads each image twice: as given, for
its origin, and centred by that origin, for its rotation (off-centre particles: 7.4° → 5.3° on
fresh particles at 6,000 steps).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import fields
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from cryoforge.engine.batches import make_batch
from cryoforge.engine.callbacks import StepInfo
from cryoforge.engine.context import RunContext
from cryoforge.engine.signals import stop_point
from cryoforge.engine.stages import register_runner
from cryoforge.errors import TrainingDiverged
from cryoforge.losses.views import VIEWS
from cryoforge.ops.images import GRID_SYMMETRIES_XY, apply_grid_symmetry
from cryoforge.ops.rotations import grid_symmetry_pose, random_rotations
from cryoforge.ops.shift import translate_images
from cryoforge.options import Options
from cryoforge.schedules.base import Stage
from cryoforge.types import CTFParams, ParticleBatch, Pose

log = logging.getLogger("cryoforge")


class AmortizeOptions(Options):
    """Settings of an ``amortize`` stage (``Stage.options``)."""

    lr: float | None = Field(None, gt=0, description="encoder learning rate (None: train.lr_encoder)")
    synthetic_fraction: float = Field(
        0.5, ge=0, le=1, description="share of each batch made of fresh projections of the map"
    )
    shift_weight: float = Field(
        0.05, ge=0, description="weight of the origin error (per px of distance, beside the chordal distance)"
    )
    batch_size: int | None = Field(None, ge=2, description="images per step (None: train.batch_size)")
    rotation_loss: Literal["chordal", "chordal2"] = Field(
        "chordal",
        description="chordal: ‖R − R_table‖_F (∝ the angle: each particle counts alike, robust to "
        "outliers); chordal2: its square (the mean is pulled by the worst particles)",
    )
    lr_schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="learning rate over the stage: constant, or cosine decay to zero"
    )
    recentre: float = Field(
        0.75,
        ge=0,
        le=1,
        description="share of training images moved to near the box centre (their table origin, "
        "plus a jitter of recentre_jitter_px): the encoder then also learns centred particles, and "
        "inference runs a second pass on each image centred by the first pass's origin",
    )
    recentre_jitter_px: float = Field(
        0.5, ge=0, le=100, description="σ (px, per axis) of the origin left in a recentred training image"
    )
    grid_augment: bool = Field(
        True,
        description="move each training image by a random one of the 8 symmetries of the pixel grid "
        "(90° turns, mirrors; its pose moves exactly with it): 8× the distinct examples",
    )
    sampled_map: bool = Field(
        True,
        description="render the synthetic projections from the map sampled once on a grid twice as "
        "fine (gridding-corrected trilinear reads), not from the network per slice: the volume is "
        "fixed in this stage. Boxes above 128 px always use the network (the grid's memory)",
    )


def recentred(
    images: torch.Tensor, target: Pose, share: float, jitter_angstrom: float, px: float, gen: torch.Generator
) -> tuple[torch.Tensor, Pose]:
    """A random ``share`` of the ``(B, L, L)`` images moved so that their origin becomes a small jitter.

    An image whose particle has origin ``o`` (RELION's sign: it sits at ``−o``), translated by
    ``o − j``, is the image of the same particle with origin ``j``; ``j`` is drawn per image,
    Gaussian with σ ``jitter_angstrom`` per axis (the error of a first pass's origin). The
    translation is a Fourier phase shift (periodic: the noise wraps round the edge).
    """
    pick = (torch.rand(len(images), generator=gen) < share).to(images.device)
    if not bool(pick.any()):
        return images, target
    jitter = jitter_angstrom * torch.randn(int(pick.sum()), 2, generator=gen).to(target.shift_angstrom)
    move = (target.shift_angstrom[pick] - jitter) / px
    out, shift = images.clone(), target.shift_angstrom.clone()
    out[pick] = translate_images(images[pick], move.to(images.dtype))
    shift[pick] = jitter
    return out, Pose(target.rotation, shift)


@functools.cache
def _grid_moves(L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 grid moves of ``L × L`` images: ``(8, L²)`` source pixel of every pixel, and ``(8, 3, 3)``
    pose turns ``[[A, 0], [0, det A]]`` (:func:`~cryoforge.ops.rotations.grid_symmetry_pose`)."""
    moves = list(GRID_SYMMETRIES_XY.values())
    pixels = torch.arange(L * L).reshape(L, L)
    source = torch.stack([apply_grid_symmetry(pixels, A).reshape(-1) for A in moves])
    eye, zero = torch.eye(3, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64)
    return source, torch.stack([grid_symmetry_pose(A, eye, zero)[0] for A in moves])


def grid_augmented(images: torch.Tensor, target: Pose, gen: torch.Generator) -> tuple[torch.Tensor, Pose]:
    """Each ``(B, L, L)`` image moved by a random symmetry of the pixel grid, with its pose.

    A 90° turn or a mirror of a particle image is exactly the image of the same particle at a
    known other pose (:func:`~cryoforge.ops.rotations.grid_symmetry_pose`; a mirror is the view
    from the other side), with no interpolation: the encoder sees 8 distinct examples per image.
    One gather moves every image (each pixel's source under its move).
    """
    B, L = len(images), images.shape[-1]
    source, turns = _grid_moves(L)
    pick = torch.randint(len(turns), (B,), generator=gen)
    out = images.reshape(B, -1).gather(1, source[pick].to(images.device)).reshape(images.shape)
    turn = turns[pick].to(target.rotation)
    shift = (turn[:, :2, :2].to(target.shift_angstrom.dtype) @ target.shift_angstrom[..., None])[..., 0]
    return out, Pose(turn @ target.rotation, shift)


def encoder_images(ctx: RunContext, parts: list[tuple[torch.Tensor, CTFParams | None]]) -> torch.Tensor:
    """The ``(B_i, L, L)`` images of ``parts``, concatenated as the encoder reads them: one
    :meth:`~cryoforge.pipeline.Pipeline.encoder_images` call for all of them when their CTFs have the
    same fields (the real and synthetic images of a step), else one per part."""
    ctfs = [c for _, c in parts]
    fields_of = [None if c is None else tuple(getattr(c, f.name) is None for f in fields(c)) for c in ctfs]
    images = torch.cat([i for i, _ in parts])
    if all(f is None for f in fields_of):
        return ctx.pipeline.encoder_images(images, None)
    if len(set(fields_of)) == 1:
        return ctx.pipeline.encoder_images(images, CTFParams.cat(ctfs))  # type: ignore[arg-type]
    return torch.cat([ctx.pipeline.encoder_images(i, c) for i, c in parts])


def stage_lr(base_lr: float, step: int, total: int, schedule: str) -> float:
    """Learning rate at ``step`` of ``total``: constant, or ``base·½(1 + cos(π·step/total))``."""
    if schedule == "constant":
        return base_lr
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def chordal_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(B,)`` squared Frobenius distance between rotation matrices ``(B, 3, 3)``."""
    return (pred - target).pow(2).sum((-1, -2))


def synthetic_batch(
    ctx: RunContext, n: int, noise_std: float, gen: torch.Generator, volume: torch.nn.Module | None = None
) -> tuple[ParticleBatch, Pose]:
    """``n`` projections of the current map at random poses, CTFs and origins of random particles, noise.

    Each synthetic image takes the CTF and the table's origin of a random particle, so the
    encoder sees the data's own spread of off-centre particles. ``volume`` renders them (default:
    the pipeline's).
    """
    posed = ctx.table_index()
    pick = posed[torch.randint(len(posed), (n,), generator=gen).numpy()]
    template = make_batch(ctx.source, pick, ctx.device)
    origin = ctx.table_pose(pick).shift_angstrom.float().to(ctx.device)
    pose = Pose(random_rotations(n, gen).float().to(ctx.device), origin)
    with torch.no_grad():
        clean = ctx.pipeline.imaging(ctx.pipeline.volume if volume is None else volume, pose, template.ctf)
        noisy = clean + noise_std * torch.randn(clean.shape, generator=gen).to(clean)
    return ParticleBatch(noisy, template.ctf, template.index), pose


@torch.no_grad()
def estimate_noise_std(ctx: RunContext, n: int = 256, volume: torch.nn.Module | None = None) -> float:
    """Pixel noise σ of the data: the residual of the map's projections at the table's poses."""
    idx = ctx.table_index()[:n]
    batch = make_batch(ctx.source, idx, ctx.device)
    pred = ctx.pipeline.imaging(
        ctx.pipeline.volume if volume is None else volume, ctx.table_pose(idx).to(ctx.device), batch.ctf
    )
    return float((batch.images - pred).std())


def sampled_map(ctx: RunContext) -> torch.nn.Module | None:
    """The pipeline's volume sampled on a grid twice as fine as the images' frequencies
    (:class:`~cryoforge.volumes.sampled.SampledVolume`), or ``None`` above
    :data:`~cryoforge.volumes.sampled.MAX_SAMPLED_BOX` px (the network renders then)."""
    from cryoforge.volumes.sampled import MAX_SAMPLED_BOX, SampledVolume

    L = ctx.source.image_size
    if L > MAX_SAMPLED_BOX:
        return None
    was_training = ctx.pipeline.volume.training
    ctx.pipeline.volume.eval()
    out = SampledVolume(ctx.pipeline.volume, L)
    ctx.pipeline.volume.train(was_training)
    return out


@register_runner("amortize", options=AmortizeOptions)
def run_amortize(ctx: RunContext, stage: Stage) -> None:
    """Supervised encoder training on the pose table (and synthetic views); the volume is kept."""
    opts = AmortizeOptions.model_validate(stage.options)
    tc = ctx.config.train
    prog = ctx.stage_state(stage)
    for key, value in (("step", 0), ("epoch", 0)):
        prog.setdefault(key, value)
    ctx.use_encoder(stage.encoder)
    encoder = ctx.pipeline.encoder
    if encoder is None:
        return
    ctx.table_pose(ctx.index[:1])  # a clear error without a pose table
    total = ctx.cap_stage_steps(
        prog["step"],
        stage.max_steps
        or tc.max_steps
        or max(1, (stage.epochs or tc.epochs or 1)) * math.ceil(len(ctx.table_index()) / tc.batch_size),
    )
    if prog["step"] >= total:
        return
    base_lr = opts.lr or tc.lr_encoder
    optimizer = torch.optim.Adam(encoder.parameters(), lr=base_lr)
    resumed, ctx.resumed_optimizer = ctx.resumed_optimizer, None
    if resumed is not None and resumed[0] == stage.name:
        optimizer.load_state_dict(resumed[1])
    ctx.optimizer, ctx.optimizer_stage = optimizer, stage.name
    render = sampled_map(ctx) if opts.sampled_map else None
    noise = prog.get("noise_std") or estimate_noise_std(ctx, volume=render)
    prog["noise_std"] = noise
    views = [VIEWS[v] for v in ctx.pipeline.loss.views]  # the π-rotated copy too: 6.8° vs 10.7° alone
    px = ctx.source.pixel_size_angstrom
    batch_size = opts.batch_size or tc.batch_size
    n_syn = round(batch_size * opts.synthetic_fraction)
    n_real = max(1, batch_size - n_syn)
    posed = ctx.table_index()  # the particles whose pose a search found (a subset, or all)
    n_batches = math.ceil(len(posed) / n_real)
    images_seen, rate_t0 = 0, ctx.clock.elapsed()
    coll = ctx.collective
    while prog["step"] < total:
        perm = np.random.default_rng(tc.seed + 7919 * (prog["epoch"] + 1)).permutation(posed)
        for b in range(prog["step"] % n_batches, n_batches):
            stop_point(ctx)  # the state resumes exactly here (step, epoch; the optimizer is ctx's)
            # with several processes each takes its share of the batch (and draws its own views)
            gen = torch.Generator().manual_seed(tc.seed * 1_000_003 + prog["step"] + 7_919_993 * coll.rank)
            chunk = perm[b * n_real : (b + 1) * n_real]
            chunk = chunk[coll.shard(len(chunk))]
            batch = make_batch(ctx.source, chunk, ctx.device)
            parts = [(batch.images, batch.ctf)]
            target = ctx.table_pose(chunk).to(ctx.device)
            mine_syn = coll.shard(n_syn)
            if mine_syn.stop > mine_syn.start:
                syn, syn_pose = synthetic_batch(ctx, mine_syn.stop - mine_syn.start, noise, gen, render)
                parts.append((syn.images, syn.ctf))
                target = Pose.cat([target, syn_pose])
            # what the encoder reads (phase-flipped by the CTF, for the vgg default), before the
            # moves below (a grid move also moves the CTF: prepare first, Encoder's docstring)
            images = encoder_images(ctx, parts)
            if opts.recentre > 0:
                images, target = recentred(
                    images, target, opts.recentre, opts.recentre_jitter_px * px, px, gen
                )
            if opts.grid_augment:
                images, target = grid_augmented(images, target, gen)
            # every view in one encoder pass: 64 images cost 46 ms, two passes of 32 cost 70 ms
            pred = encoder(torch.cat([view.transform(images) for view in views]))
            want = Pose.cat([view.pose_to_original(target) for view in views])  # each map is an involution
            err = chordal_loss(pred.rotation, want.rotation)
            if opts.rotation_loss == "chordal":
                err = (err + 1e-8).sqrt()
            shift_err = pred.shift_angstrom - want.shift_angstrom
            # the distance (not its square), like the rotation's: every particle counts alike
            shift_px = (shift_err.pow(2).sum(-1) / px**2 + 1e-8).sqrt()
            loss = (err + opts.shift_weight * shift_px).mean()
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"encoder loss became {float(loss)} in stage {stage.name!r}; lower its lr"
                )
            for group in optimizer.param_groups:
                group["lr"] = stage_lr(base_lr, prog["step"], total, opts.lr_schedule)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if coll.world > 1:  # the mean gradient over the processes' shares of the batch
                for param in encoder.parameters():
                    if param.grad is not None:
                        coll.sum_(param.grad).div_(coll.world)
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(encoder.parameters(), tc.grad_clip)
            optimizer.step()
            prog["step"] += 1
            ctx.state["step"] += 1
            ctx.state["elapsed_s"] = ctx.clock.elapsed()
            lv = float(loss.detach())
            images_seen += len(images) * coll.world
            rate = images_seen / max(ctx.state["elapsed_s"] - rate_t0, 1e-9)
            logged = ctx.state["step"] % tc.log_every == 0
            if logged:
                ctx.result.history.append(
                    {"step": ctx.state["step"], "loss": lv, "elapsed_s": ctx.state["elapsed_s"]}
                )
            ctx.emit(
                "on_step",
                StepInfo(stage, ctx.state["step"], prog["step"], total, prog["epoch"], lv, rate, 1.0, logged),
            )
            if prog["step"] >= total:
                return
        prog["epoch"] += 1
