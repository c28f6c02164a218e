"""The global pose search stage (kind ``"search"``): poses and origins for every particle, no encoder.

A low-resolution, cryoSPARC/cryoDRGN-AI-style search that the amortized stages start from
(scoring and maps: :mod:`cryoforge.engine.search_scoring`):

1. **Centring** (off by default, ``centring``). From random poses the map is the rotational
   average of the data, a round blob whose projections hardly depend on the rotation: every
   particle can be centred on it by scoring a wide grid of in-plane shifts (``shift_extent_px``,
   ``shift_step_px``). It mis-centres elongated molecules (measured in ``docs/validation.md``);
   the local shift grid of every iteration finds the origins without it.
2. **Random starts** (one by default). ``starts`` starts, each its own random poses for the same
   ``start_subset`` particles, run ``start_iterations`` global iterations; the start whose map
   fits the data best (lowest residual) seeds the global search.
3. **Global search** at ``size`` px (Fourier-cropped images, the map held as a voxel grid).
   Each iteration scores every image against the central slices of the current map at every
   rotation of a near-uniform grid (``directions × inplane``) × the shifts around the image's
   current origin (``local_shifts``: a plus of 5 or a 3 × 3 square), CTF included, as matrix
   products; keeps each image's ``keep`` best
   rotations, each with its best origin, with tempered posterior weights (soft assignment), and
   backprojects them into the next map, whose density is kept in the box centre. The band
   widens from ``band_px[0]`` to ``band_px[1]`` Fourier pixels over the iterations, and the
   temperature of the weights anneals geometrically from ``temperature`` to 1: early maps
   average many hypotheses instead of committing to a wrong one.
4. **Local refinement** at the data's full size: each pose is perturbed on a small cubic grid of
   rotations of ``refine_steps_deg`` × a 3 × 3 grid of sub-pixel origin offsets, and the best
   pair is kept, against the full-size backprojection; both steps shrink.

The result is the pose table ``ctx.poses`` (rows follow ``ctx.index``; origins in Å, RELION's
sign). Progress is checkpointed after every iteration, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field, field_validator

from cryoforge.config import Options, RunConfig
from cryoforge.engine.callbacks import StepInfo
from cryoforge.engine.checkpoint import save_checkpoint
from cryoforge.engine.collective import LOCAL, Collective
from cryoforge.engine.context import RunContext
from cryoforge.engine.gold_standard import fsc_filtered_halves, half_labels, half_resolution_px
from cryoforge.engine.initial_map import initial_search_map, read_initial_map
from cryoforge.engine.search_scoring import (
    SearchSpectra,
    backproject_hypotheses,
    centre_particles,
    full_size_sums,
    global_iteration,
    map_centre_px,
    recentred_origins,
    refine_locally,
)
from cryoforge.engine.signals import stop_point
from cryoforge.engine.stages import register_runner
from cryoforge.engine.whitening import background_power_per_shell
from cryoforge.errors import ConfigError
from cryoforge.ops.filters import soft_sphere_mask
from cryoforge.ops.rotations import random_rotations
from cryoforge.ops.search import shift_grid_px, so3_grid
from cryoforge.ops.symmetry import point_group_matrices, symmetric_reconstruction
from cryoforge.schedules.base import Stage
from cryoforge.types import Pose

log = logging.getLogger("cryoforge")


class RefinementChecks(Options):
    """The checks of ``symmetry`` and ``refine_steps_deg`` shared by the stages that refine poses
    (``search``, ``refine``), which declare those fields with their own defaults."""

    @field_validator("symmetry", check_fields=False)
    @classmethod
    def _known_group(cls, v: str) -> str:
        point_group_matrices(v)  # a ValueError naming the supported groups
        return v.upper()

    @field_validator("refine_steps_deg", check_fields=False)
    @classmethod
    def _positive_steps(cls, v: list[float]) -> list[float]:
        if not all(0 < x <= 180 for x in v):
            raise ValueError("refinement steps must be in (0, 180] degrees")
        return v


class SearchOptions(RefinementChecks):
    """Settings of a ``search`` stage (``Stage.options``)."""

    size: int = Field(
        16, ge=8, le=512, description="box (px) of the global search; images are Fourier-cropped"
    )
    directions: int = Field(300, ge=12, le=100_000, description="projection directions of the rotation grid")
    inplane: int = Field(24, ge=4, le=3600, description="in-plane angles per direction")
    iterations: int = Field(12, ge=1, le=10_000, description="global search iterations")
    hold_iterations: int = Field(
        0,
        ge=0,
        le=10_000,
        description="more global iterations after the band march, at its last band and temperature 1",
    )
    band_px: tuple[float, float] = Field(
        (5.0, 8.0), description="band radius in Fourier pixels at the first and last iteration"
    )
    keep: int = Field(16, ge=1, le=1000, description="best rotations kept per image (soft assignment)")
    temperature: float = Field(
        30.0,
        ge=1,
        le=1e6,
        description="temperature of the soft assignment at the first global iteration, annealed "
        "geometrically to 1 at the last; 1: the plain posterior",
    )
    refine_steps_deg: list[float] = Field(
        [4.0, 2.0, 1.0, 1.0], description="local refinement steps at full size (degrees)"
    )
    wiener: float = Field(0.1, gt=0, description="Wiener term of the backprojections (relative)")
    batch: int = Field(1000, ge=1, le=1_000_000, description="images per scoring batch")
    shift_extent_px: float = Field(
        8.0,
        ge=0,
        le=10_000,
        description="largest origin searched (px of the data, radius); 0: none",
    )
    shift_step_px: float | None = Field(
        None,
        gt=0,
        description="step of the global shift grid (px of the data); default half a pixel of the search box",
    )
    local_shifts: Literal["plus", "square"] = Field(
        "plus",
        description="offsets tried around each origin per global iteration: 'plus' (the origin and one "
        "step along ±x, ±y: 5) or 'square' (3 x 3: 9)",
    )
    centring: bool = Field(
        False,
        description="centre every particle on the round starting map over the wide shift grid first "
        "(mis-centres elongated molecules; the local grid of every iteration finds origins without it)",
    )
    starts: int = Field(
        1, ge=1, le=1000, description="random starts tried on a subset; the one the data fit best is kept"
    )
    start_iterations: int = Field(6, ge=1, le=1000, description="global iterations of each random start")
    start_subset: int = Field(
        600, ge=10, le=10_000_000, description="particles each random start is tried on"
    )
    symmetry: str = Field(
        "C1",
        description="point group imposed on the search's maps (RELION's convention: Cn about z, "
        "Dn adds a two-fold about x; also T, O); C1: none. The map is written in that frame",
    )
    scale: bool = Field(
        False,
        description="score each image at its own best contrast scale (real particles differ in ice "
        "thickness and contrast); false: every image at the map's scale",
    )
    whiten: bool = Field(
        False,
        description="weight every frequency by 1/σ² of the noise measured on the images' background "
        "(the coloured-noise likelihood; real data)",
    )
    subset: int | None = Field(
        None,
        ge=100,
        le=10**9,
        description="particles searched: a random subset of min(N, subset), the rest get their poses "
        "from the encoder (an infer stage) and local refinement (a refine stage); None: all",
    )
    online_iterations: int = Field(
        0,
        ge=0,
        le=100_000,
        description="stochastic steps before the global iterations, each on a random batch of "
        "online_batch particles, moving the map by online_rate towards the batch's map (0: none)",
    )
    online_batch: int = Field(300, ge=2, le=10_000_000, description="particles per online step")
    online_rate: float = Field(0.3, gt=0, le=1, description="fraction the map moves per online step")
    gold_standard: bool = Field(
        False,
        description="local refinement in two random halves, each against its own half map filtered "
        "by the half maps' FSC (RELION's gold standard): frequencies the data do not support do not "
        "steer the poses; for real particles at low SNR",
    )
    mask_diameter_angstrom: float | None = Field(
        None,
        gt=0,
        le=100_000,
        description="particle diameter in Å (RELION's --particle_diameter): every map of the search "
        "is multiplied by a soft sphere of this diameter (raised-cosine edge of 2 voxels); null: no mask",
    )
    initial_map: str | None = Field(
        None,
        description="a map (.mrc at the particles' pixel size) the global search starts from instead of "
        "random poses (RELION's --ref): with half sets both halves start from it; null: ab initio",
    )
    initial_lowpass_angstrom: float = Field(
        30.0,
        gt=0,
        le=100_000,
        description="resolution (Å) initial_map is low-passed to before the search (RELION's --ini_high): "
        "half maps share nothing finer",
    )
    initial_origins: Literal["zero", "input"] = Field(
        "zero",
        description="'zero': find every origin from scratch; 'input': start from the input's origins "
        "(re-extracted data) and search around them",
    )

    @field_validator("band_px")
    @classmethod
    def _positive_band(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 < b <= 10_000 for b in v):
            raise ValueError("band radii must be > 0 Fourier px")
        return v


def configured_search_options(config: RunConfig) -> SearchOptions | None:
    """The default schedule's search options (``schedule.search``, defaults filled in); ``None``
    for another schedule."""
    if config.schedule.name != "abinit":
        return None
    search = config.schedule.options.get("search")
    return SearchOptions.model_validate(search if isinstance(search, dict) else {})


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


def search_rows(n: int, subset: int | None, seed: int) -> torch.Tensor | None:
    """Sorted rows of the ``n`` particles that a search of ``subset`` particles scores (``None``: all).

    A seeded random choice, so a resumed run searches the same particles; sorted, so the stacks
    are read in order.
    """
    if subset is None or subset >= n:
        return None
    gen = torch.Generator().manual_seed(seed * 104_729 + 3)
    return torch.randperm(n, generator=gen)[:subset].sort().values


def _input_origins_px(ctx: RunContext, px_angstrom: torch.Tensor) -> torch.Tensor:
    """The input's origins of the run's particles in px of the data; an error when it has none."""
    origins = getattr(ctx.source, "origins_angstrom", None)  # sources that predate it lack it
    if origins is None and ctx.source.poses is not None:
        origins = ctx.source.poses.shift_angstrom
    if origins is None:
        raise ConfigError(
            "schedule.search.initial_origins: 'input' needs origins in the particle file "
            "(rlnOriginX/YAngst or alignments3D/shift)"
        )
    return origins[torch.as_tensor(ctx.index)].double() / px_angstrom[:, None]


def map_mask(diameter_angstrom: float | None, box: int, voxel_angstrom: float) -> torch.Tensor | None:
    """The soft sphere of ``diameter_angstrom`` (a stage's ``mask_diameter_angstrom``) for a ``box``-px
    map of ``voxel_angstrom`` Å/voxel, or ``None`` without a diameter. Its raised-cosine edge is 2
    voxels wide, outside the diameter."""
    if diameter_angstrom is None:
        return None
    return soft_sphere_mask(box, diameter_angstrom / 2 / voxel_angstrom, 2.0)


def masked(volume: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``volume`` times ``mask`` (:func:`map_mask`); ``volume`` itself without a mask."""
    return volume if mask is None else volume * mask


def _centre_on_round_map(
    sp: SearchSpectra,
    volume: torch.Tensor,
    rot0: torch.Tensor,
    opts: SearchOptions,
    crop: float,
    step_px: float,
    coll: Collective = LOCAL,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Origins (px of the search box) from the wide shift grid, and the map of the centred data."""
    wide = shift_grid_px(opts.shift_extent_px * crop, step_px * crop)
    # once: centring again on the (sharper, less round) map of the centred data was measured to
    # double the error (4AKE, σ = 2 px: median 1.2 px after one pass, 2.5 px after two)
    origin = centre_particles(sp, volume, opts.band_px[0], wide, opts.batch)
    return origin, backproject_hypotheses(sp, rot0, None, opts.wiener, origin[:, None], opts.symmetry, coll)


def _iterate(
    sp: SearchSpectra,
    volume: torch.Tensor,
    grid: torch.Tensor,
    it: int,
    origin: torch.Tensor,
    opts: SearchOptions,
    crop: float,
    step_px: float,
    coll: Collective = LOCAL,
    mask: torch.Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor, torch.Tensor, float]:
    """Global iteration ``it``: soft assignment over rotations × shifts, then the next map.

    Returns the assignment (``index``, ``weights``, ``noise``, ``origins``), the backprojected
    map (its density moved to the box centre when shifts are searched) and the band used.
    With several processes ``coll``, the assignment is of this process's particles (``sp``) and
    the map of all. ``mask`` (the search box's, :func:`map_mask`) multiplies the new map.
    ``progress(done, total)`` follows the scoring's batches.
    """
    frac = min(it / max(opts.iterations - 1, 1), 1.0)  # held at the last band after the march
    band = opts.band_px[0] + (opts.band_px[1] - opts.band_px[0]) * frac
    band = min(band, sp.size / 2)
    shifts = opts.shift_extent_px > 0
    reach = 1.0 if opts.local_shifts == "plus" else 1.5  # steps: 5 or 9 offsets
    local = shift_grid_px(step_px * crop * reach, step_px * crop) if shifts else None
    temperature = opts.temperature ** (1 - min(frac, 1.0))
    index, weights, noise, origins = global_iteration(
        sp, volume, grid, band, opts.keep, opts.batch, origin, local, temperature, coll, opts.scale, progress
    )
    if shifts:  # origins stay inside the searched disc
        limit = opts.shift_extent_px * crop
        r = origins.norm(dim=-1, keepdim=True)
        origins = torch.where(r > limit, origins * (limit / r.clamp_min(1e-12)), origins)
    volume = backproject_hypotheses(sp, grid[index], weights, opts.wiener, origins, opts.symmetry, coll)
    if shifts:  # shifts let the map drift; keep its density in the box centre
        c = map_centre_px(volume)
        if float(c.norm()) > 0.25:
            origins = recentred_origins(origins, grid[index], c)
            volume = backproject_hypotheses(
                sp, grid[index], weights, opts.wiener, origins, opts.symmetry, coll
            )
    return index, weights, noise, origins, masked(volume, mask), band


def _best_start(
    sp: SearchSpectra,
    grid: torch.Tensor,
    origin_px: torch.Tensor,
    opts: SearchOptions,
    crop: float,
    step_px: float,
    seed: int,
    name: str,
    coll: Collective = LOCAL,
    mask: torch.Tensor | None = None,
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
        volume = backproject_hypotheses(sub, rot0, None, opts.wiener, origin[:, None], opts.symmetry, coll)
        volume = masked(volume, mask)
        noise = math.inf
        for it in range(opts.start_iterations):
            _, _, noise, origins, volume, _ = _iterate(
                sub, volume, grid, it, origin, opts, crop, step_px, coll, mask
            )
            origin = origins[:, 0]
        log.info("stage %r: random start %d of %d: residual %.5f", name, k + 1, opts.starts, noise)
        if best is None or noise < best[0]:
            best = (noise, volume)
    assert best is not None
    return best[1]


def _online_phase(
    sp: SearchSpectra,
    volume: torch.Tensor,
    grid: torch.Tensor,
    origin_px: torch.Tensor,
    opts: SearchOptions,
    crop: float,
    step_px: float,
    seed: int,
    name: str,
    coll: Collective = LOCAL,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stochastic (online) EM before the global iterations: the map moves by small random batches.

    Each of ``online_iterations`` steps scores a random batch of ``online_batch`` particles
    against the current map (the first iteration's band and temperature) and moves the map a
    fraction ``online_rate`` towards the batch's backprojection. The noise of small batches lets
    the map leave the wrong structure a deterministic full-data iteration would keep refining
    (cryoSPARC and RELION start ab initio by stochastic gradient steps on minibatches for this
    reason). Returns the map and the origins (px of the search box) of this process's particles.
    The phase is seeded, so a run killed inside it repeats it exactly on resume.
    """
    gen = torch.Generator().manual_seed(seed * 7919 + 31 + 104_729 * coll.rank)
    n = len(sp.Y)
    b = max(1, min(n, opts.online_batch // coll.world))
    origin = origin_px.clone()
    for t in range(opts.online_iterations):
        rows = torch.randperm(n, generator=gen)[:b]
        _, _, noise, origins, batch_map, _ = _iterate(
            sp.subset(rows), volume, grid, 0, origin[rows], opts, crop, step_px, coll, mask
        )
        origin[rows] = origins[:, 0]
        volume = (1 - opts.online_rate) * volume + opts.online_rate * batch_map
        if (t + 1) % 10 == 0 or t + 1 == opts.online_iterations:
            log.info(
                "stage %r: online step %d of %d, residual %.5f", name, t + 1, opts.online_iterations, noise
            )
    return volume, origin


@register_runner("search", options=SearchOptions)
def run_search(ctx: RunContext, stage: Stage) -> None:
    """Global pose search then local refinement; leaves the pose table in ``ctx.poses``."""
    opts = SearchOptions.model_validate(stage.options)
    prog = ctx.stage_state(stage)
    prog.setdefault("iteration", 0)
    prog.setdefault("refined", 0)
    L = ctx.source.image_size
    rows = search_rows(len(ctx.index), opts.subset, ctx.config.train.seed)
    index = ctx.index if rows is None else ctx.index[rows.numpy()]  # the particles searched
    N = len(index)
    n_global = opts.iterations + opts.hold_iterations
    total = n_global + len(opts.refine_steps_deg)
    grid = so3_grid(opts.directions, opts.inplane)
    px_all = particle_pixel_sizes(ctx)
    px_a = px_all if rows is None else px_all[rows]
    size = min(opts.size, L)
    crop = size / L  # search-box px per data px
    step_px = opts.shift_step_px if opts.shift_step_px is not None else 0.5 / crop
    searching_shifts = opts.shift_extent_px > 0
    data_px = float(ctx.source.pixel_size_angstrom)
    mask = map_mask(opts.mask_diameter_angstrom, size, data_px / crop)  # the search box's maps
    if ctx.poses is None or prog["iteration"] == 0:
        gen = torch.Generator().manual_seed(ctx.config.train.seed)
        n_all = len(ctx.index)
        start = _input_origins_px(ctx, px_all) if opts.initial_origins == "input" else torch.zeros(n_all, 2)
        ctx.poses = _pose(random_rotations(n_all, gen), start, px_all)
        ctx.set_table_rows(rows)  # the other rows hold no found pose until an infer stage
    t0 = time.perf_counter()
    table = ctx.poses if rows is None else ctx.poses.index(rows)  # the searched particles' rows
    coll = ctx.collective
    mine = coll.shard(N)  # this process's particles (all of them with one process)
    power = background_power_per_shell(ctx.source, index) if opts.whiten else None
    if prog["iteration"] < n_global:
        sp = SearchSpectra(ctx, size, opts.batch, index[mine], power)
        origin = table.shift_angstrom.double() / px_a[:, None] * crop  # px of the search box
        if "assign_index" in prog:  # resumed: the map of the last finished iteration, exactly
            last_origin = prog.get("assign_origin")
            volume = backproject_hypotheses(
                sp,
                grid[prog["assign_index"][mine]],
                prog["assign_weight"][mine],
                opts.wiener,
                None if last_origin is None else last_origin[mine],
                opts.symmetry,
                coll,
            )
            volume = masked(volume, mask)
        else:  # random poses: the rotational average of the data
            rot0 = table.rotation.double()[mine][:, None]
            volume = backproject_hypotheses(
                sp, rot0, None, opts.wiener, origin[mine][:, None], opts.symmetry, coll
            )
            volume = masked(volume, mask)
            if opts.initial_map is not None:  # a reference instead (at the rotational average's scale)
                reference = read_initial_map(opts.initial_map, L, data_px)
                lowpass = opts.initial_lowpass_angstrom
                volume = initial_search_map(reference, size, L * data_px, lowpass, volume)
                volume = masked(volume, mask)
                log.info(
                    "stage %r: starting from %s low-passed to %g Å",
                    stage.name,
                    opts.initial_map,
                    opts.initial_lowpass_angstrom,
                )
            elif searching_shifts and opts.centring and opts.initial_origins == "zero":
                mine_origin, volume = _centre_on_round_map(sp, volume, rot0, opts, crop, step_px, coll)
                volume = masked(volume, mask)
                origin = coll.gather(mine_origin, N)
                ctx.set_table_poses(rows, _pose(table.rotation, origin / crop, px_a))
            if opts.starts > 1 and opts.initial_map is None:
                volume = _best_start(
                    sp, grid, origin[mine], opts, crop, step_px, ctx.config.train.seed, stage.name, coll, mask
                )
            if opts.online_iterations and opts.initial_map is None:
                volume, mine_origin = _online_phase(
                    sp,
                    volume,
                    grid,
                    origin[mine],
                    opts,
                    crop,
                    step_px,
                    ctx.config.train.seed,
                    stage.name,
                    coll,
                    mask,
                )
                origin = coll.gather(mine_origin, N)
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
        while prog["iteration"] < n_global:
            stop_point(ctx)  # a signal stops here: the iteration's state resumes exactly
            if ctx.steps_left() == 0:  # train.max_steps caps the whole run
                return
            it = prog["iteration"]

            def progress(done: int, total: int, it: int = it) -> None:
                ctx.emit("on_particles", f"global iteration {it + 1}/{n_global}", done, total)

            assign, weights, noise, origins, volume, band = _iterate(
                sp, volume, grid, it, origin[mine], opts, crop, step_px, coll, mask, progress
            )
            assign, weights = coll.gather(assign, N), coll.gather(weights, N)
            origins = coll.gather(origins, N)
            origin = origins[:, 0]
            ctx.set_table_poses(rows, _pose(grid[assign[:, 0]], origin / crop, px_a))
            prog["assign_index"], prog["assign_weight"], prog["assign_origin"] = assign, weights, origins
            prog["iteration"] = it + 1
            _step(ctx, stage, prog["iteration"], total, noise, band / (size / 2), N, t0)
    if ctx.steps_left() == 0:
        return
    table = ctx.poses if rows is None else ctx.poses.index(rows)
    rotation = table.rotation.double().clone()  # rows are refined in place below
    origin = table.shift_angstrom.double() / px_a[:, None]  # px of the data
    steps = opts.refine_steps_deg
    if prog["refined"] >= len(steps):
        return
    # the particles refined together against one map: all, or (gold standard) each half alone
    groups = _refinement_groups(N, mine, ctx.config.train.seed if opts.gold_standard else None)
    volumes = [
        symmetric_reconstruction(
            coll.sum_sums(full_size_sums(ctx, rotation[g], opts.batch, origin[g], index[g.numpy()], power)),
            opts.symmetry,
            opts.wiener,
        )
        for g in groups
    ]
    full_mask = map_mask(opts.mask_diameter_angstrom, L, data_px)
    volumes = _filtered([masked(v, full_mask) for v in volumes], stage.name)
    sizes = [coll.total(float(len(g))) for g in groups]
    while prog["refined"] < len(steps):
        stop_point(ctx)
        if ctx.steps_left() == 0:
            return
        j = prog["refined"]
        last = j == len(steps) - 1  # the map after the last step is not needed here
        shift_step = step_px / 2 ** (j + 1) if searching_shifts else 0.0
        residual, maps = 0.0, []
        for g, volume, n_g in zip(groups, volumes, sizes, strict=True):
            g_rotation, g_residual, g_volume, g_origin = refine_locally(
                ctx,
                rotation[g],
                volume,
                steps[j],
                opts.batch,
                None if last else opts.wiener,
                origin[g],
                shift_step,
                opts.symmetry,
                index=index[g.numpy()],
                coll=coll,
                noise_power=power,
                scaled=opts.scale,
            )
            rotation[g], origin[g] = g_rotation, g_origin
            residual += g_residual * n_g / max(sum(sizes), 1.0)
            maps.append(g_volume)
        rotation, origin = coll.gather(rotation[mine], N), coll.gather(origin[mine], N)
        ctx.set_table_poses(rows, _pose(rotation, origin, px_a))
        if not last:
            volumes = _filtered([masked(v, full_mask) for v in maps], stage.name)
        prog["refined"] = j + 1
        _step(ctx, stage, n_global + j + 1, total, residual, 1.0, N, t0)


def _refinement_groups(n: int, mine: slice, seed: int | None) -> list[torch.Tensor]:
    """Rows (of ``n``) of this process's particles refined against one map each: ``[mine]``, or,
    with a ``seed`` (gold standard), this process's particles of each random half."""
    rows = torch.arange(n)[mine]
    if seed is None:
        return [rows]
    labels = half_labels(n, seed)[mine]
    return [rows[labels == h] for h in (0, 1)]


def _filtered(volumes: list[torch.Tensor], name: str) -> list[torch.Tensor]:
    """One map as it is; two half maps each filtered by their FSC (the resolution is logged)."""
    if len(volumes) == 1:
        return volumes
    a, b, values = fsc_filtered_halves(volumes[0], volumes[1])
    res = half_resolution_px(values)
    log.info("stage %r: local refinement, half maps agree to FSC-0.143 at %.2f px", name, res)
    return [a, b]


def _step(
    ctx: RunContext, stage: Stage, stage_step: int, total: int, value: float, band: float, n: int, t0: float
) -> None:
    """Count one search iteration as a step: clock, callbacks (progress, logs), checkpoint."""
    ctx.state["step"] += 1
    ctx.state["elapsed_s"] = ctx.clock.elapsed()
    rate = n * stage_step / max(time.perf_counter() - t0, 1e-9)
    info = StepInfo(
        stage, ctx.state["step"], stage_step, total, 0, value, rate, band, True, n * stage_step, n * total
    )
    ctx.emit("on_step", info)
    if ctx.rank == 0:
        save_checkpoint(ctx)
