"""The entry point: resolve, set up the run directory and devices, run the schedule's stages.

``run(config)`` trains one model on every particle, or two independent ones on the two halves
(``train.half_sets``) and compares them.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from cryoforge.config import RunConfig, resolve
from cryoforge.engine.build import build_pipeline, optimizer_factory, pick_device
from cryoforge.engine.callbacks import Callback
from cryoforge.engine.checkpoint import CheckpointCallback, load_checkpoint, restore
from cryoforge.engine.context import Clock, RunContext, RunResult
from cryoforge.engine.data_checks import check_ground_truth_map, report_data_quality
from cryoforge.engine.evaluation import EvaluationCallback
from cryoforge.engine.export import ExportCallback
from cryoforge.engine.halves import (
    NO_STRUCTURE,
    PauseCallback,
    Paused,
    append_history,
    half_poses,
    report_halfmap_fsc,
    run_halfmap_fsc,
    train_halves,
    write_final_maps,
    write_fitted_only,
)
from cryoforge.engine.initial_map import configured_initial_map
from cryoforge.engine.pictures import PicturesCallback, write_halves_report
from cryoforge.engine.portable import absolute_inputs, portable_json
from cryoforge.engine.preflight import check_resume, claim_run_dir, data_signature, preflight
from cryoforge.engine.progress import ProgressCallback
from cryoforge.engine.shared_start import shared_start
from cryoforge.engine.stages import run_stages, schedule_stages
from cryoforge.engine.tensorboard import TensorBoardCallback
from cryoforge.errors import ConfigError
from cryoforge.io.atomic import atomic_path
from cryoforge.io.mrc import read_map
from cryoforge.io.outputs import (
    check_run_dir,
    config_input_files,
    refuse_input_overlap,
    run_output_paths,
    source_input_paths,
)
from cryoforge.metrics.summary import write_json
from cryoforge.plugins import build_registry, get_plugin_manager, plugin_versions
from cryoforge.registry import Registry
from cryoforge.roles import Source
from cryoforge.types import BuildContext

log = logging.getLogger("cryoforge")

# ----------------------------------------------------------------------------- set-up


def distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def setup_logging(run_dir: Path, rank: int) -> None:
    """Log to ``run_dir/run.log`` on rank 0 (replacing the handler of an earlier run)."""
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        if getattr(h, "_cryoforge", False):
            log.removeHandler(h)
            h.close()
    if rank == 0:
        fh = logging.FileHandler(run_dir / "run.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        fh._cryoforge = True  # type: ignore[attr-defined]
        log.addHandler(fh)


def prepare(config: RunConfig, plugins_dirs: list[str] | None = None) -> tuple[RunConfig, Registry, Source]:
    """Resolve the config against the registry and open the source (no training)."""
    pm = get_plugin_manager(plugins_dirs)
    registry = build_registry(pm)
    config = resolve(config, registry)
    config = config.model_copy(update={"plugins": plugin_versions(pm)})
    source = registry.build("source", config.source.name, config.source.options)
    return config, registry, source


def write_run_files(config: RunConfig, run_dir: Path, registry: Registry | None = None) -> None:
    """``config.json`` (resolved, without plugins) and ``plugins.json`` (plugin → version).

    With the ``registry``, ``config.json`` is portable (:func:`~cryoforge.engine.portable.portable_json`).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / "config.json") as tmp:
        if registry is None:
            tmp.write_text(config.model_dump_json(indent=2, exclude={"plugins"}))
        else:
            tmp.write_text(portable_json(config, registry, run_dir))
    with atomic_path(run_dir / "plugins.json") as tmp:
        tmp.write_text(json.dumps(config.plugins, indent=2))


def fits_volume(config: RunConfig) -> bool:
    """Whether a stage of the run fits the volume (else its exported map is an untrained network's:
    a staged schedule of search stages alone, such as a half-set run's shared start)."""
    if config.schedule.name != "staged":
        return True
    stages = config.schedule.options.get("stages") or []
    kinds = [st.get("kind") if isinstance(st, dict) else getattr(st, "kind", None) for st in stages]
    return not kinds or any(k != "search" for k in kinds)


def make_callbacks(config: RunConfig, run_dir: Path, rank: int) -> list[Callback]:
    """The callbacks of a run, in calling order; none on ranks other than 0 (they write nothing)."""
    if rank != 0:
        return []
    tc = config.train
    callbacks: list[Callback] = [
        CheckpointCallback(tc.checkpoint_every_steps, tc.checkpoint_every_s),
        ExportCallback(tc.export_every_s, warn_contrast=fits_volume(config)),
        EvaluationCallback(),
    ]
    if tc.pictures:
        callbacks.append(PicturesCallback())  # after the evaluation, whose metrics it shows
    tensorboard = TensorBoardCallback.open(run_dir) if tc.tensorboard else None
    if tensorboard is not None:
        callbacks.append(tensorboard)
    callbacks.append(ProgressCallback(tc.progress, tc.log_every_s))
    return callbacks


# ----------------------------------------------------------------------------- training


def train_one(
    config: RunConfig,
    registry: Registry,
    source: Source,
    index: np.ndarray,
    run_dir: Path,
    resume: bool = False,
    pause_at_s: float | None = None,
) -> RunResult:
    """Train one model on the particles ``index`` of ``source``; outputs go to ``run_dir``.

    With ``pause_at_s``, training stops after the first step at that training time, exported and
    checkpointed, with ``paused`` set in the result (continue with ``resume``).
    """
    tc = config.train
    rank, world = distributed()
    device = pick_device(tc.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir, rank)
    torch.manual_seed(tc.seed)
    bctx = BuildContext(source.image_size, source.pixel_size_angstrom)
    pipeline = build_pipeline(config, registry, bctx).to(device)
    if tc.gt_poses and source.poses is None:
        raise ConfigError("train.gt_poses: the source has no poses")
    if tc.compile:  # in place: the state dict keeps its keys
        for module in (pipeline.volume, pipeline.encoder):
            if module is not None:
                module.compile()
    stages = schedule_stages(config, registry, bctx)
    ctx = RunContext(
        config,
        registry,
        source,
        index,
        run_dir,
        device,
        pipeline,
        optimizer_factory(config),
        rank=rank,
        world=world,
    )
    if resume and ctx.checkpoint_path.is_file():
        restore(ctx, load_checkpoint(ctx.checkpoint_path))
        log.info(
            "resumed from %s at stage %d, step %d", ctx.checkpoint_path, ctx.state["stage"], ctx.state["step"]
        )
        if ctx.state["stage"] >= len(stages) or ctx.steps_left() == 0:
            done = (
                f"{run_dir}: the run had finished (its stages, or train.max_steps {ctx.state['step']}); "
                "nothing was trained, the outputs were exported again"
            )
            log.info(done)
            ctx.result.warnings.append(done)
    log.info(
        "training %s on %d particles (L=%d, %.3f Å/px) on %s, schedule %s (%d stages)",
        config.volume.name,
        len(index),
        bctx.image_size,
        bctx.pixel_size_angstrom,
        device,
        config.schedule.name,
        len(stages),
    )
    ctx.callbacks = make_callbacks(config, run_dir, rank)
    if pause_at_s is not None and rank == 0:  # the pause exports: no periodic export of its own
        for cb in ctx.callbacks:
            if isinstance(cb, ExportCallback):
                cb.every_s = float("inf")
        ctx.callbacks.append(PauseCallback(pause_at_s))
    ctx.clock = Clock(ctx.state["elapsed_s"])
    try:
        run_stages(ctx, stages)
        ctx.emit("on_run_end")
    except Paused:
        ctx.result.paused = True
    finally:
        for cb in ctx.callbacks:
            cb.close()
    ctx.result.pipeline = pipeline
    return ctx.result


# ----------------------------------------------------------------------------- entry point


def check_run(
    config: RunConfig, plugins_dirs: list[str] | None = None, resume: bool = False, overwrite: bool = False
) -> tuple[RunConfig, Registry, Source]:
    """Every check of :func:`run` before it writes a byte; writes nothing (``run --dry-run``).

    The folder (a run is replaced only with ``overwrite``), the options of every component, of
    the training and of every stage of the schedule, the data, the device, the model, and on
    ``resume`` the checkpoint and the options against it. Returns the resolved config (inputs
    absolute), the registry and the opened source.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite: give one of them")
    rank, _ = distributed()
    run_dir = Path(config.output_dir)
    if rank == 0:
        check_run_dir(run_dir, resume, overwrite, config_input_files(config))
    config, registry, source = prepare(config, plugins_dirs)
    config = absolute_inputs(config, registry)  # the run no longer depends on the cwd
    bctx = BuildContext(source.image_size, source.pixel_size_angstrom)
    schedule_stages(config, registry, bctx)
    check_ground_truth_map(config, source)
    refuse_input_overlap(
        run_output_paths(run_dir),
        [*source_input_paths(source), config.ground_truth_map, configured_initial_map(config)],
        "--output-dir",
    )
    pipeline = preflight(config, registry, source, bctx)
    if resume:
        check_resume(config, registry, run_dir, source, pipeline)
    return config, registry, source


def run(
    config: RunConfig, plugins_dirs: list[str] | None = None, resume: bool = False, overwrite: bool = False
) -> RunResult:
    """Train as configured; see :class:`RunResult`.

    A directory that already holds a run is continued with ``resume`` and replaced only with
    ``overwrite``; a folder that is not a run (no marker, not empty) is never used. Everything is
    checked (:func:`check_run`: folder, options of every stage, data, device, model, and on
    ``resume`` the options against the checkpoint) before the first byte is written; then the
    folder is locked for the run's duration.
    """
    rank, _ = distributed()
    run_dir = Path(config.output_dir)
    config, registry, source = check_run(config, plugins_dirs, resume, overwrite)
    inputs = [*source_input_paths(source), config.ground_truth_map]
    with claim_run_dir(run_dir, resume, overwrite, data_signature(source), rank == 0, inputs):
        if rank == 0:
            report_data_quality(source)
            write_run_files(config, run_dir, registry)
        return _train(config, registry, source, run_dir, resume, rank)


def _train(
    config: RunConfig, registry: Registry, source: Source, run_dir: Path, resume: bool, rank: int
) -> RunResult:
    _, world = distributed()
    index = np.arange(len(source))
    try:
        if not config.train.half_sets:
            return train_one(config, registry, source, index, run_dir, resume)
        halves = split_halves(len(source), config.train.seed)
        for i, h in enumerate(halves):
            half_dir = run_dir / f"half{i + 1}"
            half_dir.mkdir(parents=True, exist_ok=True)
            if rank == 0:
                write_index(half_dir / "particles.txt", h)

        def train_half(
            cfg: RunConfig, index: np.ndarray, half_dir: Path, res: bool, pause_at_s: float | None
        ) -> RunResult:
            return train_one(cfg, registry, source, index, half_dir, res, pause_at_s)

        if config.train.half_start == "shared":  # one low-resolution start for both: engine/shared_start.py

            def train_start(cfg: RunConfig, index: np.ndarray, start_dir: Path, res: bool) -> RunResult:
                return train_one(cfg, registry, source, index, start_dir, res)

            config = shared_start(config, source, run_dir, resume, train_start, rank)
        # disjoint particles, different seeds, in lockstep: see engine/halves.py
        results = train_halves(config, halves, run_dir, resume, train_half, rank, world, source)
        return combine_halves(results, source, halves, config, run_dir) if rank == 0 else results[0]
    finally:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- half sets


def split_halves(n: int, seed: int) -> list[np.ndarray]:
    """Two disjoint, sorted random halves of ``range(n)`` (the gold-standard split)."""
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])]


def write_index(path: Path, index: np.ndarray) -> None:
    """A particle index list, one 0-based index per line (cryoDRGN's ``--ind`` text form)."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{i}\n" for i in index))


def combine_halves(
    results: list[RunResult], source: Source, halves: list[np.ndarray], config: RunConfig, run_dir: Path
) -> RunResult:
    """The final half-map FSC (gold standard, :func:`~cryoforge.engine.halves.run_halfmap_fsc`), the
    fitted maps' FSC, the final map and the report.

    Each half is backprojected from its own particles at its own final poses; the blind map
    alignment (both hands) brings half 2 onto half 1; never the encoders' poses, never a
    network's map. ``map.mrc`` is the backprojections' average weighted by their FSC (RELION's
    post-processing, without sharpening); ``map_fitted.mrc`` the two fitted maps' average, half 2
    turned the same way (:func:`~cryoforge.engine.halves.write_final_maps`).
    """
    m1, _ = read_map(results[0].map_path)
    m2, _ = read_map(results[1].map_path)
    m1t, m2t = torch.from_numpy(m1), torch.from_numpy(m2)
    px = source.pixel_size_angstrom
    result = RunResult(run_dir, map_path=run_dir / "map.mrc", fsc_plot=run_dir / "fsc_halves.png")
    poses = [half_poses(source, h, r) for h, r in zip(halves, results, strict=True)]
    end = max((r.history[-1]["elapsed_s"] for r in results if r.history), default=0.0)
    if all(p is not None for p in poses):
        hm = run_halfmap_fsc(config, source, halves, poses, (m1t, m2t))
        result.metrics = report_halfmap_fsc(hm, run_dir, px, "at the end")
        avg = write_final_maps(hm, run_dir, px)
        if not hm.consistent:
            result.warnings.append(NO_STRUCTURE)
        # the last point of the half-map resolution over time is the final one
        append_history(run_dir, {**hm.history(), "elapsed_s": float(end)})
    else:  # no poses at all: no half-map FSC (the fitted maps' would read a network's prior)
        avg = ((m1t + m2t) / 2).numpy()
        result.fsc_plot = None
        result.warnings.append("no half-map FSC: the halves have no poses to backproject with")
        write_fitted_only(run_dir, avg, px)
    write_json(run_dir / "metrics.json", result.metrics)
    if config.train.pictures:
        write_halves_report(result, results, avg, px)
    return result
