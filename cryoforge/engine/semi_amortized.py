"""Poses for the particles a subset search left out: the encoder predicts them, a local search refines them.

For large inputs the ``search`` stage scores only a subset (``subset``); the volume is fitted and
the encoder amortized on that subset's poses. Two stages then pose every other particle, as in
cryoSPIN's semi-amortized inference:

1. ``infer`` (kind ``"infer"``): the trained encoder predicts their poses in one pass each
   (the encoder alone: no rendering; or averaged over the 8 symmetries of the pixel grid).
2. ``refine`` (kind ``"refine"``): each predicted pose first competes with the best pose of one
   global search iteration at the search's box, against the searched particles' map (the global
   check: at low SNR the encoder's errors are beyond a local search's reach); then it is refined
   by the local search of the search stage (a cubic grid of small rotations × sub-pixel origins,
   steps shrinking) against the full-size backprojection of the searched particles, then of those
   and the refined ones. The last step refines the searched particles too, against the map of
   every particle; the volume is then fitted to every particle at its pose.

When the search scored every particle, both stages have nothing to do: small inputs keep the
search → fit → amortize path. Progress is checkpointed per chunk of particles and per step.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from pydantic import Field

from cryoforge.engine.batches import encoder_poses
from cryoforge.engine.callbacks import StepInfo
from cryoforge.engine.checkpoint import save_checkpoint
from cryoforge.engine.context import RunContext
from cryoforge.engine.grid_views import infer_poses_grid_averaged, trained_recentred
from cryoforge.engine.loop import train_gradient
from cryoforge.engine.search import RefinementChecks, map_mask, masked, particle_pixel_sizes
from cryoforge.engine.search_scoring import (
    SearchSpectra,
    full_size_sums,
    global_iteration,
    particles_done,
    pose_errors,
    refine_locally,
)
from cryoforge.engine.signals import stop_point
from cryoforge.engine.stages import register_runner
from cryoforge.engine.whitening import background_power_per_shell
from cryoforge.errors import ConfigError
from cryoforge.ops.projection import BackprojectionSums, oversampled_spectrum
from cryoforge.ops.search import shift_grid_px, so3_grid
from cryoforge.ops.symmetry import symmetric_reconstruction
from cryoforge.options import Options
from cryoforge.roles import Source
from cryoforge.schedules.base import Stage
from cryoforge.types import Pose

log = logging.getLogger("cryoforge")

INFERRED = "inferred_rows"
"""Key of ``ctx.state``: rows of the pose table the encoder predicted, until a refine stage refines them."""


class InferStageOptions(Options):
    """Settings of an ``infer`` stage (``Stage.options``)."""

    average_views: bool = Field(
        False,
        description="average the encoder's poses over the 8 symmetries of the pixel grid (8 passes; "
        "the refine stage refines the poses either way)",
    )
    batch_size: int = Field(256, ge=1, le=100_000, description="images per encoder pass")
    chunk: int = Field(
        20_000, ge=1, le=10**9, description="particles between checkpoints (a killed run resumes there)"
    )


class RefineStageOptions(RefinementChecks):
    """Settings of a ``refine`` stage (``Stage.options``)."""

    refine_steps_deg: list[float] = Field(
        [4.0, 2.0, 1.0], description="local refinement steps (degrees), from the encoder's poses"
    )
    size: int | None = Field(
        None,
        ge=8,
        le=4096,
        description="box (px) the images are Fourier-cropped to for refinement (None: the data's)",
    )
    shift_step_px: float = Field(
        0.5,
        ge=0,
        le=100,
        description="origin step of the first refinement step (px of the data), halved per step",
    )
    wiener: float = Field(0.1, gt=0, description="Wiener term of the backprojections (relative)")
    batch: int = Field(1000, ge=4, le=1_000_000, description="images per scoring batch (÷ 4 at full size)")
    symmetry: str = Field("C1", description="point group imposed on the reference maps (as the search's)")
    whiten: bool = Field(False, description="whiten the images by their background's noise (as the search's)")
    scale: bool = Field(False, description="score each image at its best contrast scale (as the search's)")
    mask_diameter_angstrom: float | None = Field(
        None, gt=0, le=100_000, description="soft spherical mask of the reference maps, Å (as the search's)"
    )
    fit_steps: int = Field(
        300, ge=0, le=10**9, description="volume fit steps on every particle after refinement (0: none)"
    )
    refine_searched: bool = Field(
        True,
        description="the last step also refines the searched particles, against the map of every "
        "particle (the search posed them against the subset's map only)",
    )
    global_check: bool = Field(
        True,
        description="before the local steps, score every rotation of the search's grid (× origins "
        "around the encoder's) for each inferred particle at the search's box against the searched "
        "particles' map, and start from that pose where it scores better than the encoder's: at low "
        "SNR the encoder's errors are beyond a local search's reach",
    )
    global_size: int = Field(
        16, ge=8, le=512, description="box (px) of that global check (the abinit schedule: the search's size)"
    )
    global_band_px: float = Field(
        8.0,
        gt=0,
        description="band radius (Fourier px of global_size) of the global check (the search's last)",
    )
    directions: int = Field(
        300, ge=12, le=100_000, description="projection directions of the global check's rotation grid"
    )
    inplane: int = Field(24, ge=4, le=3600, description="in-plane angles per direction of that grid")


def _missing_rows(ctx: RunContext) -> torch.Tensor:
    """Rows of the pose table without a found pose (empty when a search scored every particle)."""
    rows = ctx.table_rows()
    if rows is None:
        return torch.zeros(0, dtype=torch.long)
    have = torch.zeros(len(ctx.index), dtype=torch.bool)
    have[rows] = True
    return torch.nonzero(~have).flatten()


def _step(
    ctx: RunContext,
    stage: Stage,
    done: int,
    total: int,
    value: float,
    rate: float,
    particles: tuple[int, int],
) -> None:
    """One unit of the stage as a step: callbacks (progress, logs) and a checkpoint."""
    ctx.state["step"] += 1
    ctx.state["elapsed_s"] = ctx.clock.elapsed()
    info = StepInfo(stage, ctx.state["step"], done, total, 0, value, rate, 1.0, True, *particles)
    ctx.emit("on_step", info)
    if ctx.rank == 0:
        save_checkpoint(ctx)


@register_runner("infer", options=InferStageOptions)
def run_infer(ctx: RunContext, stage: Stage) -> None:
    """The encoder's poses for the rows of the pose table a subset search left out."""
    opts = InferStageOptions.model_validate(stage.options)
    prog = ctx.stage_state(stage)
    if "pending" not in prog:
        missing = _missing_rows(ctx)
        if len(missing) == 0:
            return  # the search posed every particle
        prog["pending"], prog["done"] = missing, 0
    missing = prog["pending"]
    ctx.use_encoder(stage.encoder)
    if ctx.pipeline.encoder is None:
        raise ConfigError(f"stage {stage.name!r} predicts poses with the encoder, but the run has none")
    n_chunks = -(-len(missing) // opts.chunk)
    coll = ctx.collective
    log.info("stage %r: the encoder poses %d particles the search left out", stage.name, len(missing))
    t0, seen = time.perf_counter(), 0
    recentre = trained_recentred(ctx.config, ctx.registry)  # the encoder reads centred images too
    while prog["done"] < len(missing):
        stop_point(ctx)
        if ctx.steps_left() == 0:
            return
        rows = missing[prog["done"] : prog["done"] + opts.chunk]
        mine = coll.shard(len(rows))  # each process poses its share of the chunk
        positions = ctx.index[rows[mine].numpy()]
        if opts.average_views:
            pose = infer_poses_grid_averaged(
                ctx.pipeline, ctx.source, positions, opts.batch_size, ctx.device, recentre=recentre
            )
        else:
            pose = encoder_poses(ctx.pipeline, ctx.source, positions, opts.batch_size, ctx.device, recentre)
        pose = Pose(
            coll.gather(pose.rotation.float(), len(rows)), coll.gather(pose.shift_angstrom.float(), len(rows))
        )
        ctx.set_table_poses(rows, pose)
        prog["done"] += len(rows)
        seen += len(rows)
        rate = seen / max(time.perf_counter() - t0, 1e-9)
        chunks = -(-prog["done"] // opts.chunk)
        _step(ctx, stage, chunks, n_chunks, float(prog["done"]), rate, (prog["done"], len(missing)))
    ctx.state[INFERRED] = missing
    ctx.set_table_rows(None)  # every row holds a pose now


@register_runner("refine", options=RefineStageOptions)
def run_refine(ctx: RunContext, stage: Stage) -> None:
    """Local refinement of the encoder's poses at full size, then a volume fit on every particle."""
    opts = RefineStageOptions.model_validate(stage.options)
    prog = ctx.stage_state(stage)
    prog.setdefault("refined", 0)
    rows = ctx.state.get(INFERRED)
    if rows is None or len(rows) == 0:
        return  # no pose came from the encoder: nothing to refine
    assert ctx.poses is not None
    steps = opts.refine_steps_deg
    if prog["refined"] < len(steps):
        searched = torch.ones(len(ctx.index), dtype=torch.bool)
        searched[rows] = False
        px = particle_pixel_sizes(ctx)
        coll = ctx.collective
        power = background_power_per_shell(ctx.source, ctx.index) if opts.whiten else None
        all_searched = torch.nonzero(searched).flatten()
        s_rows = all_searched[coll.shard(len(all_searched))]  # each process its share of both sets
        s_rotation = ctx.poses.rotation[s_rows].double()
        s_origin = ctx.poses.shift_angstrom[s_rows].double() / px[s_rows, None]

        L = ctx.source.image_size

        def mask_at(box: int) -> torch.Tensor | None:
            return map_mask(opts.mask_diameter_angstrom, box, float(ctx.source.pixel_size_angstrom) * L / box)

        def searched_map(box: int) -> tuple[BackprojectionSums, torch.Tensor]:
            """The searched particles' backprojection sums (of every process) and masked map at
            ``box`` px: the reference (the encoder's poses are rougher)."""
            sums = coll.sum_sums(
                full_size_sums(ctx, s_rotation, opts.batch, s_origin, ctx.index[s_rows.numpy()], power, box)
            )
            return sums, masked(symmetric_reconstruction(sums, opts.symmetry, opts.wiener), mask_at(box))

        box = L if opts.size is None else min(opts.size, L)
        base, volume = searched_map(box)
        mask = mask_at(box)
        n = len(rows)
        mine = coll.shard(n)
        rotation = ctx.poses.rotation[rows].double()
        origin = ctx.poses.shift_angstrom[rows].double() / px[rows, None]
        positions = ctx.index[rows[mine].numpy()]
        if opts.global_check and not prog.get("checked"):
            g_size = min(opts.global_size, L)
            _, small_map = searched_map(g_size)
            mine_rotation, mine_origin, replaced = globally_checked(
                ctx, positions, rotation[mine], origin[mine], small_map, opts, power
            )
            rotation, origin = coll.gather(mine_rotation, n), coll.gather(mine_origin, n)
            replaced = int(coll.total(float(replaced)))
            log.info(
                "stage %r: the global check at %d px moved %d of %d inferred particles off the "
                "encoder's pose",
                stage.name,
                g_size,
                replaced,
                n,
            )
            ctx.set_table_poses(rows, Pose(rotation.float(), (origin * px[rows, None]).float()))
            prog["checked"], prog["replaced"] = True, replaced
            if ctx.rank == 0:
                save_checkpoint(ctx)
        t0 = time.perf_counter()
        while prog["refined"] < len(steps):
            stop_point(ctx)
            if ctx.steps_left() == 0:
                return
            j = prog["refined"]
            last = j == len(steps) - 1
            reference = volume  # the searched and the refined particles' map
            mine_rotation, residual, volume, mine_origin = refine_locally(
                ctx,
                rotation[mine],
                volume,
                steps[j],
                opts.batch,
                None if last else opts.wiener,
                origin[mine],
                opts.shift_step_px / 2**j,
                opts.symmetry,
                index=positions,
                base=base,
                coll=coll,
                noise_power=power,
                box=opts.size,
                scaled=opts.scale,
            )
            if volume is not None:  # the last step returns no map
                volume = masked(volume, mask)
            rotation, origin = coll.gather(mine_rotation, n), coll.gather(mine_origin, n)
            ctx.set_table_poses(rows, Pose(rotation.float(), (origin * px[rows, None]).float()))
            if last and opts.refine_searched and len(all_searched):
                # the searched particles were posed against the subset's map: one step against
                # the map of every particle (7.3° -> about 5° on 3PWP at SNR 0.05, docs/validation.md)
                s_rotation, _, _, s_origin = refine_locally(
                    ctx,
                    s_rotation,
                    reference,
                    steps[j],
                    opts.batch,
                    None,
                    s_origin,
                    opts.shift_step_px / 2**j,
                    opts.symmetry,
                    index=ctx.index[s_rows.numpy()],
                    coll=coll,
                    noise_power=power,
                    box=opts.size,
                    scaled=opts.scale,
                )
                n_s = len(all_searched)
                s_rotation, s_origin = coll.gather(s_rotation, n_s), coll.gather(s_origin, n_s)
                s_pose = Pose(s_rotation.float(), (s_origin * px[all_searched, None]).float())
                ctx.set_table_poses(all_searched, s_pose)
            prog["refined"] = j + 1
            rate = len(rows) * (j + 1) / max(time.perf_counter() - t0, 1e-9)
            _step(ctx, stage, j + 1, len(steps), residual, rate, (n * (j + 1), n * len(steps)))
    if opts.fit_steps:  # the volume, fitted so far on the searched subset, now sees every particle
        fit = Stage(
            name=f"{stage.name}.fit", kind="gradient", max_steps=opts.fit_steps, options={"poses": "table"}
        )
        ctx.emit("on_stage_start", fit)
        train_gradient(ctx, fit)
        ctx.emit("on_stage_end", fit)


def globally_checked(
    ctx: RunContext,
    positions: np.ndarray,
    rotation: torch.Tensor,
    origin_px: torch.Tensor,
    volume: torch.Tensor,
    opts: RefineStageOptions,
    noise_power: torch.Tensor | None = None,
    chunk: int = 20_000,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The better of each particle's pose and the best pose of a global search, at a small box.

    Each particle of ``positions`` (dataset positions; rows of ``rotation`` ``(n, 3, 3)`` and
    ``origin_px`` ``(n, 2)``, px of the data, follow them) is scored, Fourier-cropped to the
    box of ``volume`` (``(S, S, S)``, the searched particles' map at ``opts.global_size``), at
    every rotation of the search's grid, each at its origin and ±½ px of that box in x and y (the
    search's global iteration at temperature 1, one hypothesis kept), and at its given pose.
    The better-scoring pose is kept. The particles are read ``chunk`` at a time (memory stays
    flat). Returns the rotations, the origins (px of the data) and how many poses were replaced.
    """
    L, S = ctx.source.image_size, volume.shape[-1]
    crop = S / L
    band = min(opts.global_band_px, S / 2)
    grid = so3_grid(opts.directions, opts.inplane)
    offsets = shift_grid_px(0.5, 0.5)  # the origin and ±½ px (of the small box) in x and y
    spectrum = oversampled_spectrum(volume.double(), 2)
    rotation, origin = rotation.clone(), origin_px.clone()
    replaced, n = 0, len(positions)
    for s in range(0, n, chunk):
        sl = slice(s, min(s + chunk, n))
        sp = SearchSpectra(ctx, S, opts.batch, positions[sl], noise_power)
        start = origin[sl] * crop
        index, _, _, found = global_iteration(
            sp, volume, grid, band, 1, opts.batch, start, offsets, scaled=opts.scale
        )
        g_rotation, g_origin = grid[index[:, 0]], found[:, 0]
        better = pose_errors(sp, spectrum, g_rotation, g_origin, band, opts.scale) < pose_errors(
            sp, spectrum, rotation[sl], start, band, opts.scale
        )
        rotation[sl] = torch.where(better[:, None, None], g_rotation.to(rotation), rotation[sl])
        origin[sl] = torch.where(better[:, None], (g_origin / crop).to(origin), origin[sl])
        replaced += int(better.sum())
        particles_done(ctx, "global check", sl.stop, n)
    return rotation, origin, replaced


def refine_poses(
    source: Source,
    index: np.ndarray,
    pose: Pose,
    volume: torch.Tensor,
    steps_deg: tuple[float, ...] = (4.0, 2.0, 1.0),
    shift_step_px: float = 0.5,
    batch: int = 1000,
) -> Pose:
    """The encoder's ``pose`` of the particles ``index`` refined by local search against ``volume``.

    The semi-amortized step of ``cryoforge infer --refine``: each pose is perturbed on a 3³ grid
    of small rotations × 3 × 3 sub-pixel origins per step (``steps_deg``, origin steps from
    ``shift_step_px`` halving), against the fixed map ``volume`` ``(L, L, L)`` at the data's
    size and pixel size. Returns rotations and origins (Å) in ``index`` order.
    """
    from types import SimpleNamespace

    ctx = SimpleNamespace(source=source, index=index)
    px = particle_pixel_sizes(ctx)  # type: ignore[arg-type]
    rotation = pose.rotation.double()
    origin = pose.shift_angstrom.double() / px[:, None]
    for j, step in enumerate(steps_deg):
        rotation, _, _, origin = refine_locally(
            ctx,  # type: ignore[arg-type]
            rotation,
            volume,
            step,
            batch,
            None,
            origin,
            shift_step_px / 2**j,
        )
    return Pose(rotation.float(), (origin * px[:, None]).float())
