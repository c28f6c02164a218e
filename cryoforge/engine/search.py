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
import math
import time
from collections.abc import Iterator
from typing import Literal

import torch
from pydantic import Field

from cryoforge.config import Options
from cryoforge.engine.callbacks import StepInfo
from cryoforge.engine.checkpoint import save_checkpoint
from cryoforge.engine.context import RunContext
from cryoforge.engine.signals import stop_point
from cryoforge.engine.stages import register_runner
from cryoforge.errors import ConfigError
from cryoforge.ops.fft import fourier_crop, rfft2_images
from cryoforge.ops.grids import half_plane_query
from cryoforge.ops.projection import BackprojectionSums, oversampled_spectrum, project_fourier
from cryoforge.ops.rotations import random_rotations
from cryoforge.ops.search import local_rotations, pair_cross, pair_power, shift_grid_px, so3_grid
from cryoforge.ops.shift import origin_phase
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
    shift_extent_px: float = Field(
        8.0, ge=0, description="largest origin searched (px of the data, radius); 0 searches no shifts"
    )
    shift_step_px: float | None = Field(
        None,
        gt=0,
        description="step of the global shift grid (px of the data); default half a pixel of the search box",
    )
    starts: int = Field(
        6, ge=1, description="random starts tried on a subset; the one the data fit best is kept"
    )
    start_iterations: int = Field(6, ge=1, description="global iterations of each random start")
    start_subset: int = Field(600, ge=10, description="particles each random start is tried on")
    initial_origins: Literal["zero", "input"] = Field(
        "zero",
        description="'zero': find every origin from scratch; 'input': start from the input's origins "
        "(re-extracted data) and search around them",
    )


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

    def subset(self, rows: torch.Tensor) -> _Spectra:
        """The same spectra for the particles ``rows`` only (a copy of their rows)."""
        out = object.__new__(_Spectra)
        out.size, out.flat, out.freqs, out.radius_px = self.size, self.flat, self.freqs, self.radius_px
        out.Y, out.C = self.Y[rows], None if self.C is None else self.C[rows]
        return out


def _backproject(
    sp: _Spectra,
    rotation: torch.Tensor,
    weights: torch.Tensor | None,
    wiener: float,
    origin_px: torch.Tensor | None = None,
) -> torch.Tensor:
    """Map at ``sp.size`` from the spectra with ``rotation`` ``(N, K, 3, 3)`` and ``weights`` ``(N, K)``.

    ``origin_px`` ``(N, K, 2)`` are the hypotheses' origins in pixels of the search box (RELION's
    sign), or ``None`` for centred particles.
    """
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
            None if origin_px is None else origin_px[sl].reshape(n * K, 2),
            None if weights is None else weights[sl].reshape(n * K),
        )
    return acc.volume(wiener)


def _centred(Y: torch.Tensor, freqs: torch.Tensor, origin_px: torch.Tensor) -> torch.Tensor:
    """Spectra ``(B, M)`` of particles with origins ``(B, 2)`` px, translated back to the box centre."""
    return Y * origin_phase(freqs, origin_px).conj().to(Y.dtype)


def _best_over_offsets(errors, offsets_px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise minimum of ``errors(d)`` over the offsets ``d``, and the index of the best offset."""
    best, arg = None, None
    for j, d in enumerate(offsets_px):
        e = errors(d)
        if best is None:
            best, arg = e, torch.zeros(e.shape, dtype=torch.long)
        else:
            better = e < best
            best = torch.where(better, e, best)
            arg.masked_fill_(better, j)
    return best, arg


def global_iteration(
    sp: _Spectra,
    volume: torch.Tensor,
    grid: torch.Tensor,
    band_px: float,
    keep: int,
    batch: int,
    origin_px: torch.Tensor | None = None,
    offsets_px: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
    """Score every image against every grid rotation × in-plane shift inside ``band_px``; soft top-``keep``.

    Each image ``i`` is tried at the origins ``origin_px[i] + offsets_px`` (pixels of the search
    box); every rotation keeps its best origin, and the ``keep`` best rotations are the hypotheses.
    A shift is a phase ramp on the image, so each offset is one more matrix product of the same
    projections; the power term ``C²|P|²`` does not depend on it and is computed once.

    Returns
    -------
    index
        ``(N, keep)`` grid indices, best first.
    weights
        ``(N, keep)`` tempered posterior weights (rows sum to 1).
    noise
        The mean squared residual per frequency at the best rotations (the noise estimate).
    origins
        ``(N, keep, 2)`` the best origin of each hypothesis (pixels of the search box).
    """
    m = sp.radius_px < band_px
    fm = sp.freqs[m]
    P = project_fourier(oversampled_spectrum(volume.double(), 2), grid, fm, dtype=torch.complex64)
    N = len(sp.Y)
    if origin_px is None:
        origin_px = torch.zeros(N, 2, dtype=torch.float64)
    if offsets_px is None:
        offsets_px = torch.zeros(1, 2, dtype=torch.float64)
    index = torch.empty(N, keep, dtype=torch.long)
    score = torch.empty(N, keep)
    origins = torch.empty(N, keep, 2, dtype=torch.float64)
    norm2 = sp.Y[:, m].abs().pow(2).sum(1)
    for s in range(0, N, batch):
        sl = slice(s, s + batch)
        Y, c = sp.Y[sl][:, m], sp.ctf(sl)
        c = None if c is None else c[:, m]
        power = pair_power(c, P, len(Y))
        best, arg = _best_over_offsets(
            lambda d, Y=Y, c=c, sl=sl, power=power: (
                power - 2 * pair_cross(_centred(Y, fm, origin_px[sl] + d), c, P)
            ),
            offsets_px,
        )
        v, i = torch.topk(-best, keep, dim=1)
        index[sl], score[sl] = i, -v
        origins[sl] = origin_px[sl, None] + offsets_px[arg.gather(1, i)]
    noise = float((score[:, 0] + norm2).clamp_min(0).mean() / int(m.sum()))
    weights = torch.softmax(-(score - score[:, :1]) / (2 * max(noise, 1e-12)), dim=1)
    return index, weights, noise, origins


def centre_particles(
    sp: _Spectra, volume: torch.Tensor, band_px: float, offsets_px: torch.Tensor, batch: int
) -> torch.Tensor:
    """Origins ``(N, 2)`` (px of the search box) that best fit each image to a round ``volume``'s projection.

    Used at the start, when the map is the rotational average of the data: its projections
    hardly depend on the rotation, so one slice scored at every offset of the wide grid centres
    every particle at the cost of a few matrix products.
    """
    m = sp.radius_px < band_px
    fm = sp.freqs[m]
    P = project_fourier(
        oversampled_spectrum(volume.double(), 2),
        torch.eye(3, dtype=torch.float64)[None],
        fm,
        dtype=torch.complex64,
    )
    # every offset's phase ramp applied to the single projection: (S, M), scored as "projections"
    ramps = origin_phase(fm, offsets_px).to(P.dtype) * P
    N = len(sp.Y)
    out = torch.empty(N, 2, dtype=torch.float64)
    for s in range(0, N, batch):
        sl = slice(s, s + batch)
        c = sp.ctf(sl)
        c = None if c is None else c[:, m]
        e = pair_power(c, ramps, len(sp.Y[sl])) - 2 * pair_cross(sp.Y[sl][:, m], c, ramps)
        out[sl] = offsets_px[e.argmin(1)]
    return out


def map_centre_px(volume: torch.Tensor) -> torch.Tensor:
    """``(3,)`` centre of mass ``(x, y, z)`` in px from the box centre of the density above 20 % of its peak.

    The density's sign is that of the map's sum (dark particles give a negative map).
    """
    v = volume.double()
    v = v * (1.0 if float(v.sum()) >= 0 else -1.0)
    w = (v - 0.2 * v.max()).clamp_min(0)
    if float(w.sum()) <= 0:
        return torch.zeros(3, dtype=torch.float64)
    L = v.shape[0]
    r = torch.arange(L, dtype=torch.float64) - L // 2
    z, y, x = w.sum((1, 2)), w.sum((0, 2)), w.sum((0, 1))
    return torch.stack([(x * r).sum(), (y * r).sum(), (z * r).sum()]) / w.sum()


def recentred_origins(
    origin_px: torch.Tensor, rotation: torch.Tensor, centre_px: torch.Tensor
) -> torch.Tensor:
    """Origins ``(..., 2)`` that move a map whose density sits at ``centre_px`` ``(x, y, z)`` to the centre.

    A map point ``x`` appears in the image of pose ``R`` at ``(R x)_xy`` and a particle sits at
    ``−origin``, so moving the map by ``−c`` while keeping the images changes every origin by
    ``−(R c)_xy``.
    """
    return origin_px - (rotation @ centre_px.to(rotation.dtype))[..., :2]


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
    origin_px: torch.Tensor | None = None,
    shift_step_px: float = 0.0,
) -> tuple[torch.Tensor, float, torch.Tensor | None, torch.Tensor]:
    """Best of the ``3³`` local perturbations ``δ R`` × ``3²`` origin offsets of each pose at full size.

    ``origin_px`` ``(N, 2)`` are the current origins (px of the data, RELION's sign; ``None``:
    centred); each is tried at ``± shift_step_px`` in x and y together with every rotation
    (``shift_step_px = 0`` keeps them). Returns the refined ``(N, 3, 3)`` rotations, the mean
    squared residual per frequency, the backprojection at the refined poses when ``wiener`` is
    given (gridded in the same pass over the images; ``None`` otherwise), and the refined origins.
    """
    L = ctx.source.image_size
    _, freqs = half_plane_query(L)
    spec = oversampled_spectrum(volume.double(), 2)
    loc = local_rotations(step_deg, 1)
    N = len(rotation)
    origin = torch.zeros(N, 2, dtype=torch.float64) if origin_px is None else origin_px.double().clone()
    offsets = shift_grid_px(shift_step_px * 1.5, shift_step_px) if shift_step_px > 0 else torch.zeros(1, 2)
    offsets = offsets.double()
    out = torch.empty_like(rotation)
    acc = None if wiener is None else BackprojectionSums.zeros(L)
    residual = 0.0
    for rows, Y, C in _full_size_batches(ctx, max(1, batch // 4)):
        cand = loc[None] @ rotation[rows, None]
        P = project_fourier(spec, cand.reshape(-1, 3, 3), freqs, dtype=torch.complex64)
        P = P.reshape(len(Y), len(loc), -1)
        c = None if C is None else C.float()
        c2 = torch.ones_like(Y.real).float() if c is None else c * c
        power = torch.einsum("bm,bkm->bk", c2, P.real.pow(2) + P.imag.pow(2))
        best, arg = None, torch.zeros(len(Y), len(loc), dtype=torch.long)
        for j, d in enumerate(offsets):
            a = _centred(Y, freqs, origin[rows] + d).to(P.dtype)
            a = a if c is None else a * c
            e = power - 2 * torch.einsum("bm,bkm->bk", a.conj(), P).real
            if best is None:
                best = e
            else:
                better = e < best
                best = torch.where(better, e, best)
                arg.masked_fill_(better, j)
        val, k = best.min(1)
        pick = torch.arange(len(Y))
        out[rows] = cand[pick, k]
        origin[rows] = origin[rows] + offsets[arg[pick, k]]
        residual += float((val.double() + Y.abs().pow(2).sum(1)).sum()) / Y.shape[1]
        if acc is not None:
            acc.add(Y, freqs, out[rows], C, origin[rows])
    return out, residual / len(ctx.index), None if acc is None else acc.volume(wiener), origin


def full_size_map(
    ctx: RunContext, rotation: torch.Tensor, wiener: float, batch: int, origin_px: torch.Tensor | None = None
) -> torch.Tensor:
    """Backprojection of all particles at the data's size with one pose each (streamed)."""
    L = ctx.source.image_size
    _, freqs = half_plane_query(L)
    acc = BackprojectionSums.zeros(L)
    for rows, Y, C in _full_size_batches(ctx, max(1, batch // 4)):  # the batches refine_locally grids
        acc.add(Y, freqs, rotation[rows], C, None if origin_px is None else origin_px[rows])
    return acc.volume(wiener)


def particle_pixel_sizes(ctx: RunContext) -> torch.Tensor:
    """``(N,)`` pixel size in Å of every particle of the run (its optics group's, as the model sees it)."""
    source = ctx.source
    px = None if source.ctf is None else source.ctf.pixel_size_angstrom
    if px is None:
        return torch.full((len(ctx.index),), float(source.pixel_size_angstrom), dtype=torch.float64)
    return px[torch.as_tensor(ctx.index)].double()


def _pose(rotation: torch.Tensor, origin_px: torch.Tensor, px_angstrom: torch.Tensor) -> Pose:
    """The pose table from rotations and origins in px of the data."""
    return Pose(rotation.float(), (origin_px.double() * px_angstrom[:, None]).float())


def _input_origins_px(ctx: RunContext, px_angstrom: torch.Tensor) -> torch.Tensor:
    """The input's origins of the run's particles in px of the data; an error when it has none."""
    poses = ctx.source.poses
    if poses is None:
        raise ConfigError(
            "schedule.search.initial_origins: 'input' needs origins in the particle file "
            "(rlnOriginX/YAngst or alignments3D/shift)"
        )
    return poses.shift_angstrom[torch.as_tensor(ctx.index)].double() / px_angstrom[:, None]


def _centre_on_round_map(
    sp: _Spectra, volume: torch.Tensor, rot0: torch.Tensor, opts: SearchOptions, crop: float, step_px: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Origins (px of the search box) from the wide shift grid, and the map of the centred data."""
    wide = shift_grid_px(opts.shift_extent_px * crop, step_px * crop)
    # once: centring again on the (sharper, less round) map of the centred data was measured to
    # double the error (4AKE, σ = 2 px: median 1.2 px after one pass, 2.5 px after two)
    origin = centre_particles(sp, volume, opts.band_px[0], wide, opts.batch)
    return origin, _backproject(sp, rot0, None, opts.wiener, origin[:, None])


def _iterate(
    sp: _Spectra,
    volume: torch.Tensor,
    grid: torch.Tensor,
    it: int,
    origin: torch.Tensor,
    opts: SearchOptions,
    crop: float,
    step_px: float,
) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor, torch.Tensor, float]:
    """Global iteration ``it``: soft assignment over rotations × shifts, then the next map.

    Returns the assignment (``index``, ``weights``, ``noise``, ``origins``), the backprojected
    map (its density moved to the box centre when shifts are searched) and the band used.
    """
    frac = it / max(opts.iterations - 1, 1)
    band = opts.band_px[0] + (opts.band_px[1] - opts.band_px[0]) * frac
    band = min(band, sp.size / 2)
    shifts = opts.shift_extent_px > 0
    local = shift_grid_px(step_px * crop * 1.5, step_px * crop) if shifts else None
    index, weights, noise, origins = global_iteration(
        sp, volume, grid, band, opts.keep, opts.batch, origin, local
    )
    if shifts:  # origins stay inside the searched disc
        limit = opts.shift_extent_px * crop
        r = origins.norm(dim=-1, keepdim=True)
        origins = torch.where(r > limit, origins * (limit / r.clamp_min(1e-12)), origins)
    volume = _backproject(sp, grid[index], weights, opts.wiener, origins)
    if shifts:  # shifts let the map drift; keep its density in the box centre
        c = map_centre_px(volume)
        if float(c.norm()) > 0.25:
            origins = recentred_origins(origins, grid[index], c)
            volume = _backproject(sp, grid[index], weights, opts.wiener, origins)
    return index, weights, noise, origins, volume, band


def _best_start(
    sp: _Spectra,
    grid: torch.Tensor,
    origin_px: torch.Tensor,
    opts: SearchOptions,
    crop: float,
    step_px: float,
    seed: int,
    name: str,
) -> torch.Tensor:
    """The map of the random start that fits the data best (lowest residual), tried on a subset.

    Each start draws its own random poses for the same ``start_subset`` particles, so its first
    map is a slightly different near-round blob (the particles at their current origins
    ``origin_px``, px of the search box); ``start_iterations`` global iterations follow,
    and the residual of the last one (the noise estimate, the same band for every start) ranks
    them. A search that would settle in a wrong map from one start is outvoted by the others.
    """
    gen = torch.Generator().manual_seed(seed * 7919 + 17)
    rows = torch.randperm(len(sp.Y), generator=gen)[: min(len(sp.Y), opts.start_subset)]
    sub = sp.subset(rows)
    best: tuple[float, torch.Tensor] | None = None
    for k in range(opts.starts):
        g = torch.Generator().manual_seed(seed * 7919 + 101 + k)
        rot0 = random_rotations(len(rows), g).double()[:, None]
        origin = origin_px[rows]
        volume = _backproject(sub, rot0, None, opts.wiener, origin[:, None])
        noise = math.inf
        for it in range(opts.start_iterations):
            _, _, noise, origins, volume, _ = _iterate(sub, volume, grid, it, origin, opts, crop, step_px)
            origin = origins[:, 0]
        log.info("stage %r: random start %d of %d: residual %.5f", name, k + 1, opts.starts, noise)
        if best is None or noise < best[0]:
            best = (noise, volume)
    assert best is not None
    return best[1]


@register_runner("search")
def run_search(ctx: RunContext, stage: Stage) -> None:
    """Global pose search then local refinement; leaves the pose table in ``ctx.poses``."""
    opts = SearchOptions.model_validate(stage.options)
    prog = ctx.stage_state(stage)
    prog.setdefault("iteration", 0)
    prog.setdefault("refined", 0)
    N, L = len(ctx.index), ctx.source.image_size
    total = opts.iterations + len(opts.refine_steps_deg)
    grid = so3_grid(opts.directions, opts.inplane)
    px_a = particle_pixel_sizes(ctx)
    size = min(opts.size, L)
    crop = size / L  # search-box px per data px
    step_px = opts.shift_step_px if opts.shift_step_px is not None else 0.5 / crop
    searching_shifts = opts.shift_extent_px > 0
    if ctx.poses is None or prog["iteration"] == 0:
        gen = torch.Generator().manual_seed(ctx.config.train.seed)
        start = _input_origins_px(ctx, px_a) if opts.initial_origins == "input" else torch.zeros(N, 2)
        ctx.poses = _pose(random_rotations(N, gen), start, px_a)
    t0 = time.perf_counter()
    if prog["iteration"] < opts.iterations:
        sp = _Spectra(ctx, size, opts.batch)
        origin = ctx.poses.shift_angstrom.double() / px_a[:, None] * crop  # px of the search box
        if "assign_index" in prog:  # resumed: the map of the last finished iteration, exactly
            volume = _backproject(
                sp, grid[prog["assign_index"]], prog["assign_weight"], opts.wiener, prog.get("assign_origin")
            )
        else:  # random poses: the rotational average of the data
            rot0 = ctx.poses.rotation.double()[:, None]
            volume = _backproject(sp, rot0, None, opts.wiener, origin[:, None])
            if searching_shifts and opts.initial_origins == "zero":
                origin, volume = _centre_on_round_map(sp, volume, rot0, opts, crop, step_px)
                ctx.poses = _pose(ctx.poses.rotation, origin / crop, px_a)
            if opts.starts > 1:
                volume = _best_start(sp, grid, origin, opts, crop, step_px, ctx.config.train.seed, stage.name)
        log.info(
            "stage %r: global search, %d rotations (%d directions x %d)%s, %d particles at %d px",
            stage.name,
            len(grid),
            opts.directions,
            opts.inplane,
            f" x shifts within {opts.shift_extent_px:g} px (step {step_px:g})" if searching_shifts else "",
            N,
            size,
        )
        while prog["iteration"] < opts.iterations:
            stop_point(ctx)  # a signal stops here: the iteration's state resumes exactly
            if ctx.steps_left() == 0:  # train.max_steps caps the whole run
                return
            it = prog["iteration"]
            index, weights, noise, origins, volume, band = _iterate(
                sp, volume, grid, it, origin, opts, crop, step_px
            )
            origin = origins[:, 0]
            ctx.poses = _pose(grid[index[:, 0]], origin / crop, px_a)
            prog["assign_index"], prog["assign_weight"], prog["assign_origin"] = index, weights, origins
            prog["iteration"] = it + 1
            _step(ctx, stage, prog["iteration"], total, noise, band / (size / 2), N, t0)
    if ctx.steps_left() == 0:
        return
    rotation = ctx.poses.rotation.double()
    origin = ctx.poses.shift_angstrom.double() / px_a[:, None]  # px of the data
    steps = opts.refine_steps_deg
    volume = (
        full_size_map(ctx, rotation, opts.wiener, opts.batch, origin)
        if prog["refined"] < len(steps)
        else None
    )
    while prog["refined"] < len(steps):
        stop_point(ctx)
        if ctx.steps_left() == 0:
            return
        j = prog["refined"]
        last = j == len(steps) - 1  # the map after the last step is not needed here
        shift_step = step_px / 2 ** (j + 1) if searching_shifts else 0.0
        rotation, residual, volume, origin = refine_locally(
            ctx, rotation, volume, steps[j], opts.batch, None if last else opts.wiener, origin, shift_step
        )
        ctx.poses = _pose(rotation, origin, px_a)
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
