"""The global pose search stage (kind ``"search"``): poses for every particle, no encoder.

A low-resolution, cryoSPARC/cryoDRGN-AI-style search that the amortized stages start from:

1. **Global search** at ``size`` px (Fourier-cropped images, the map held as a voxel grid).
   Each iteration scores every image against the central slices of the current map at every
   rotation of a near-uniform grid (``directions × inplane``), CTF included, as two matrix
   products (:func:`cryoforge.ops.search.pair_errors`), keeps each image's ``keep`` best
   rotations with tempered posterior weights (soft assignment: robust where hard assignment
   stalls), and backprojects them into the next map. The band widens from ``band_px[0]`` to
   ``band_px[1]`` Fourier pixels over the iterations (frequency marching). It starts from random
   poses, i.e. from the rotational average of the data.
2. **Local refinement** at the data's full size: each pose is perturbed on a small cubic grid of
   rotations of ``refine_steps_deg`` and the best one is kept, against the full-size
   backprojection; the steps shrink below the global grid's spacing.

The result is the pose table ``ctx.poses`` (rows follow ``ctx.index``). Progress is checkpointed
after every iteration, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import torch
from pydantic import Field

from cryoforge.config import Options
from cryoforge.engine.callbacks import StepInfo
from cryoforge.engine.checkpoint import save_checkpoint
from cryoforge.engine.context import RunContext
from cryoforge.engine.stages import register_runner
from cryoforge.ops.fft import fourier_crop, rfft2_images
from cryoforge.ops.grids import half_plane_query
from cryoforge.ops.projection import BackprojectionSums, oversampled_spectrum, project_fourier
from cryoforge.ops.rotations import random_rotations
from cryoforge.ops.search import local_rotations, pair_errors, pair_errors_batched, so3_grid
from cryoforge.schedules.base import Stage
from cryoforge.types import CTFParams, Pose

log = logging.getLogger("cryoforge")


class SearchOptions(Options):
    """Settings of a ``search`` stage (``Stage.options``)."""

    size: int = Field(16, ge=8, description="box (px) of the global search; images are Fourier-cropped")
    directions: int = Field(300, ge=12, description="projection directions of the rotation grid")
    inplane: int = Field(24, ge=4, description="in-plane angles per direction")
    iterations: int = Field(12, ge=1, description="global search iterations")
    band_px: tuple[float, float] = Field(
        (5.0, 8.0), description="band radius in Fourier pixels at the first and last iteration"
    )
    keep: int = Field(8, ge=1, description="best rotations kept per image (soft assignment)")
    refine_steps_deg: list[float] = Field(
        [4.0, 2.0, 1.0, 1.0], description="local refinement steps at full size (degrees)"
    )
    wiener: float = Field(0.1, gt=0, description="Wiener term of the backprojections (relative)")
    batch: int = Field(1000, ge=1, description="images per scoring batch")


def ctf_values(
    ctf: CTFParams | None, freqs: torch.Tensor, pixel_scale: float, default_px: float
) -> torch.Tensor | None:
    """``(B, M)`` float64 CTF at ``freqs`` (cycles/px of the cropped grid), or ``None`` CTF-free.

    ``pixel_scale`` is the crop factor (original box / cropped box) applied to the particle pixel
    sizes (or to ``default_px`` when the CTF carries none).
    """
    return None if ctf is None else ctf.values_at(freqs.double(), default_px, pixel_scale)


class _Spectra:
    """Image spectra at one box size inside its Nyquist circle, read once from the source."""

    def __init__(self, ctx: RunContext, size: int, batch: int) -> None:
        source, L = ctx.source, ctx.source.image_size
        self.size = size
        self.flat, self.freqs = half_plane_query(size)
        scale = L / size
        ys, cs = [], []
        for s in range(0, len(ctx.index), batch):
            part = ctx.index[s : s + batch]
            imgs = torch.from_numpy(source.read_images(part)).double()
            if size != L:
                imgs = fourier_crop(imgs, size)
            ys.append(rfft2_images(imgs).reshape(len(part), -1)[:, self.flat].to(torch.complex64))
            ctf = None if source.ctf is None else source.ctf.index(torch.as_tensor(part))
            c = ctf_values(ctf, self.freqs, scale, source.pixel_size_angstrom)
            cs.append(None if c is None else c.float())
        self.Y = torch.cat(ys)
        self.C = None if cs[0] is None else torch.cat(cs)
        self.radius_px = self.freqs.norm(dim=1) * size

    def ctf(self, sl: slice) -> torch.Tensor | None:
        return None if self.C is None else self.C[sl]


def _backproject(
    sp: _Spectra, rotation: torch.Tensor, weights: torch.Tensor | None, wiener: float
) -> torch.Tensor:
    """Map at ``sp.size`` from the spectra with ``rotation`` ``(N, K, 3, 3)`` and ``weights`` ``(N, K)``."""
    N, K = rotation.shape[:2]
    acc = BackprojectionSums.zeros(sp.size)
    step = max(1, 2048 // K)
    for s in range(0, N, step):
        sl = slice(s, s + step)
        n = min(s + step, N) - s
        c = sp.ctf(sl)
        acc.add(
            sp.Y[sl].repeat_interleave(K, 0),
            sp.freqs,
            rotation[sl].reshape(-1, 3, 3),
            None if c is None else c.repeat_interleave(K, 0),
            None,
            None if weights is None else weights[sl].reshape(n * K),
        )
    return acc.volume(wiener)


def global_iteration(
    sp: _Spectra, volume: torch.Tensor, grid: torch.Tensor, band_px: float, keep: int, batch: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Score every image against every grid rotation inside ``band_px``; soft top-``keep``.

    Returns
    -------
    index
        ``(N, keep)`` grid indices, best first.
    weights
        ``(N, keep)`` tempered posterior weights (rows sum to 1).
    noise
        The mean squared residual per frequency at the best rotations (the noise estimate).
    """
    m = sp.radius_px < band_px
    P = project_fourier(oversampled_spectrum(volume.double(), 2), grid, sp.freqs[m], dtype=torch.complex64)
    N = len(sp.Y)
    index = torch.empty(N, keep, dtype=torch.long)
    score = torch.empty(N, keep)
    norm2 = sp.Y[:, m].abs().pow(2).sum(1)
    for s in range(0, N, batch):
        sl = slice(s, s + batch)
        c = sp.ctf(sl)
        e = pair_errors(sp.Y[sl][:, m], None if c is None else c[:, m], P)
        v, i = torch.topk(-e, keep, dim=1)
        index[sl], score[sl] = i, -v
    noise = float((score[:, 0] + norm2).clamp_min(0).mean() / int(m.sum()))
    weights = torch.softmax(-(score - score[:, :1]) / (2 * max(noise, 1e-12)), dim=1)
    return index, weights, noise


def _full_size_batches(
    ctx: RunContext, batch: int
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor | None]]:
    """Stream ``(rows, spectra (B, M), CTF (B, M) or None)`` of all particles at the data's size."""
    source, L = ctx.source, ctx.source.image_size
    flat, freqs = half_plane_query(L)
    for s in range(0, len(ctx.index), batch):
        part = ctx.index[s : s + batch]
        imgs = torch.from_numpy(source.read_images(part)).double()
        Y = rfft2_images(imgs).reshape(len(part), -1)[:, flat]
        ctf = None if source.ctf is None else source.ctf.index(torch.as_tensor(part))
        yield slice(s, s + len(part)), Y, ctf_values(ctf, freqs, 1.0, source.pixel_size_angstrom)


def refine_locally(
    ctx: RunContext,
    rotation: torch.Tensor,
    volume: torch.Tensor,
    step_deg: float,
    batch: int,
    wiener: float | None = None,
) -> tuple[torch.Tensor, float, torch.Tensor | None]:
    """Best of the ``3³`` local perturbations ``δ R`` of each pose against ``volume`` at full size.

    Returns the refined ``(N, 3, 3)`` rotations, the mean squared residual per frequency and,
    when ``wiener`` is given, the backprojection at the refined rotations, gridded in the same
    pass over the images (``None`` otherwise).
    """
    L = ctx.source.image_size
    _, freqs = half_plane_query(L)
    spec = oversampled_spectrum(volume.double(), 2)
    loc = local_rotations(step_deg, 1)
    out = torch.empty_like(rotation)
    acc = None if wiener is None else BackprojectionSums.zeros(L)
    residual = 0.0
    for rows, Y, C in _full_size_batches(ctx, max(1, batch // 4)):
        cand = loc[None] @ rotation[rows, None]
        P = project_fourier(spec, cand.reshape(-1, 3, 3), freqs, dtype=torch.complex64)
        P = P.reshape(len(Y), len(loc), -1)
        best = pair_errors_batched(Y.to(P.dtype), None if C is None else C.float(), P).min(1)
        out[rows] = cand[torch.arange(len(Y)), best.indices]
        residual += float((best.values.double() + Y.abs().pow(2).sum(1)).sum()) / Y.shape[1]
        if acc is not None:
            acc.add(Y, freqs, out[rows], C)
    return out, residual / len(ctx.index), None if acc is None else acc.volume(wiener)


def full_size_map(ctx: RunContext, rotation: torch.Tensor, wiener: float, batch: int) -> torch.Tensor:
    """Backprojection of all particles at the data's size with one rotation each (streamed)."""
    L = ctx.source.image_size
    _, freqs = half_plane_query(L)
    acc = BackprojectionSums.zeros(L)
    for rows, Y, C in _full_size_batches(ctx, max(1, batch // 4)):  # the batches refine_locally grids
        acc.add(Y, freqs, rotation[rows], C)
    return acc.volume(wiener)


@register_runner("search")
def run_search(ctx: RunContext, stage: Stage) -> None:
    """Global pose search then local refinement; leaves the pose table in ``ctx.poses``."""
    opts = SearchOptions.model_validate(stage.options)
    prog = ctx.stage_state(stage)
    prog.setdefault("iteration", 0)
    prog.setdefault("refined", 0)
    N = len(ctx.index)
    total = opts.iterations + len(opts.refine_steps_deg)
    grid = so3_grid(opts.directions, opts.inplane)
    if ctx.poses is None or prog["iteration"] == 0:
        gen = torch.Generator().manual_seed(ctx.config.train.seed)
        ctx.poses = Pose(random_rotations(N, gen).float(), torch.zeros(N, 2))
    t0 = time.perf_counter()
    size = min(opts.size, ctx.source.image_size)
    if prog["iteration"] < opts.iterations:
        sp = _Spectra(ctx, size, opts.batch)
        if "assign_index" in prog:  # resumed: the map of the last finished iteration, exactly
            volume = _backproject(sp, grid[prog["assign_index"]], prog["assign_weight"], opts.wiener)
        else:  # random poses: the rotational average of the data
            volume = _backproject(sp, ctx.poses.rotation.double()[:, None], None, opts.wiener)
        log.info(
            "stage %r: global search, %d rotations (%d directions x %d), %d particles at %d px",
            stage.name,
            len(grid),
            opts.directions,
            opts.inplane,
            N,
            size,
        )
        while prog["iteration"] < opts.iterations:
            if ctx.steps_left() == 0:  # train.max_steps caps the whole run
                return
            it = prog["iteration"]
            frac = it / max(opts.iterations - 1, 1)
            band = opts.band_px[0] + (opts.band_px[1] - opts.band_px[0]) * frac
            band = min(band, size / 2)
            index, weights, noise = global_iteration(sp, volume, grid, band, opts.keep, opts.batch)
            volume = _backproject(sp, grid[index], weights, opts.wiener)
            ctx.poses = Pose(grid[index[:, 0]].float(), torch.zeros(N, 2))
            prog["assign_index"], prog["assign_weight"] = index, weights
            prog["iteration"] = it + 1
            _step(ctx, stage, prog["iteration"], total, noise, band / (size / 2), N, t0)
    if ctx.steps_left() == 0:
        return
    rotation = ctx.poses.rotation.double()
    steps = opts.refine_steps_deg
    volume = full_size_map(ctx, rotation, opts.wiener, opts.batch) if prog["refined"] < len(steps) else None
    while prog["refined"] < len(steps):
        if ctx.steps_left() == 0:
            return
        j = prog["refined"]
        last = j == len(steps) - 1  # the map after the last step is not needed here
        rotation, residual, volume = refine_locally(
            ctx, rotation, volume, steps[j], opts.batch, None if last else opts.wiener
        )
        ctx.poses = Pose(rotation.float(), torch.zeros(N, 2))
        prog["refined"] = j + 1
        _step(ctx, stage, opts.iterations + j + 1, total, residual, 1.0, N, t0)


def _step(
    ctx: RunContext, stage: Stage, stage_step: int, total: int, value: float, band: float, n: int, t0: float
) -> None:
    """Count one search iteration as a step: clock, callbacks (progress, logs), checkpoint."""
    ctx.state["step"] += 1
    ctx.state["elapsed_s"] = ctx.clock.elapsed()
    rate = n * stage_step / max(time.perf_counter() - t0, 1e-9)
    info = StepInfo(stage, ctx.state["step"], stage_step, total, 0, value, rate, band, True)
    ctx.emit("on_step", info)
    if ctx.rank == 0:
        save_checkpoint(ctx)
