"""Pose inference with a trained run: the paper's evaluation mode."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from cryoforge.config import RunConfig, apply_override
from cryoforge.engine.build import build_pipeline, pick_device
from cryoforge.engine.checkpoint import load_checkpoint
from cryoforge.engine.context import CHECKPOINT
from cryoforge.engine.grid_views import infer_poses_grid_averaged, trained_recentred
from cryoforge.engine.portable import load_run_config
from cryoforge.engine.pose_files import write_pose_files
from cryoforge.engine.run import prepare
from cryoforge.errors import InputFileError
from cryoforge.io.console_progress import ParticleProgress
from cryoforge.io.mrc import read_map, read_voxel_size, stack_info
from cryoforge.io.outputs import (
    MARKER,
    read_run_marker,
    refuse_existing,
    refuse_input_overlap,
    source_input_paths,
)
from cryoforge.io.writable import check_writable_file
from cryoforge.types import BuildContext
from cryoforge.volumes.sampled import MAX_SAMPLED_BOX, SampledVolume

log = logging.getLogger("cryoforge")


def infer_run(
    run_dir: Path,
    particles: str | None,
    out_star: str | None,
    batch_size: int = 512,
    ind: str | None = None,
    first: int | None = None,
    plugins_dirs: list[str] | None = None,
    overwrite: bool = False,
    average_views: bool = True,
    refine: bool = False,
    exact_volume: bool = False,
    progress: bool = True,
    recentre: bool = True,
) -> Path:
    """Predict poses for every particle (dataset order) with the encoder of ``run_dir``.

    Works from any working directory (the run's ``config.json`` is portable). ``particles``
    replaces the run's particle file (its subset then no longer applies); ``ind``/``first`` pick
    a subset (see :func:`cryoforge.sources.subsets.select_particles`). The star keeps the input's
    columns (:func:`~cryoforge.engine.pose_files.write_pose_files`); a ``.cs`` input also gets a
    ``.cs`` next to it. The outputs (default ``RUN_DIR/inferred_poses.star``) must not exist
    unless ``overwrite``, and are never inputs (the particles, their stacks, the run's files).
    ``average_views`` averages the encoder's poses over the 8 symmetries of the pixel grid
    (:mod:`cryoforge.engine.grid_views`); off, each pose is one forward pass, as in training.
    ``recentre`` (an encoder trained with the amortize stage's ``recentre``) reads each image a
    second time, centred by the first pass's origin; ``False`` reads it once.
    ``refine`` refines every predicted pose by a local search against the run's ``map.mrc``
    (:func:`~cryoforge.engine.semi_amortized.refine_poses`: semi-amortized inference).
    The loss chooses among the encoder's views by rendering each against the volume; the volume is
    read from its samples on a grid twice as fine as the images' frequencies
    (:class:`~cryoforge.volumes.sampled.SampledVolume`), not evaluated per slice, unless
    ``exact_volume`` or the box is above :data:`~cryoforge.volumes.sampled.MAX_SAMPLED_BOX` px.
    ``progress`` shows particles done and the time left on stderr.

    Everything is checked before any image is read: the run (a checkpoint with an encoder), the
    outputs and their folder, and that the particles have the box the encoder was trained on.
    """
    run_dir = Path(run_dir)
    config, ckpt = encoder_run(run_dir, plugins_dirs)
    if not ckpt.is_file():
        raise InputFileError(ckpt, "missing: not a finished cryoforge run directory", "RUN_DIR")
    out = Path(out_star) if out_star else run_dir / "inferred_poses.star"
    check_writable_file(out, "--out")
    if config.train.gt_poses:
        raise InputFileError(
            run_dir / "config.json",
            "this run fitted the known poses (train.gt_poses): it has no encoder to predict poses with",
            "train.gt_poses",
        )
    trained_size = _trained_image_size(run_dir)
    state = load_checkpoint(ckpt)
    if not isinstance(state.get("model"), dict):
        raise InputFileError(ckpt, "not a cryoforge checkpoint (no model weights)", "model")
    if not any(k.startswith("encoder.") for k in state["model"]):
        raise InputFileError(ckpt, "the checkpoint holds no encoder weights: nothing to infer with", "model")
    if not trains_encoder(config):
        raise InputFileError(
            run_dir / "config.json",
            "this run trains no encoder (schedule.amortize_steps is 0; with train.half_encoders "
            "'first' only half1 has one): its weights are the untrained network's",
            "schedule.amortize_steps",
        )
    if not encoder_trained(config, state):
        log.warning(
            "%s: the run has not reached its amortize stage: the encoder is untrained and its poses "
            "are not meaningful (finish the run with --resume first)",
            ckpt,
        )
    if particles:
        from cryoforge.sources import SUFFIX_TO_SOURCE

        config = apply_override(config, "source.path", os.path.abspath(particles))
        config = apply_override(config, "source.name", SUFFIX_TO_SOURCE.get(Path(particles).suffix, "star"))
        for key in ("ind", "first"):
            if key in config.source.options:
                config = apply_override(config, f"source.{key}", None)
    if ind:
        config = apply_override(config, "source.ind", os.path.abspath(ind))
    if first:
        config = apply_override(config, "source.first", first)
    config = config.model_copy(update={"train": config.train.model_copy(update={"gt_poses": False})})
    config, registry, source = prepare(config, plugins_dirs)
    if trained_size is not None and source.image_size != trained_size:
        raise InputFileError(
            source.path,
            f"images are {source.image_size} px (after source.downsample_to) but the run was trained "
            f"on {trained_size} px images; give particles with the run's box",
            "--particles",
        )
    trained_px = _trained_pixel_size(run_dir)
    if trained_px is not None and not math.isclose(source.pixel_size_angstrom, trained_px, rel_tol=1e-2):
        raise InputFileError(
            source.path,
            f"images are {source.pixel_size_angstrom:.4g} Å/px (after source.downsample_to) but the run "
            f"was trained at {trained_px:.4g} Å/px: the encoder would see the molecule at another "
            "scale; give particles at the run's pixel size (or downsample them to it)",
            "--particles",
        )
    reference = run_dir / "map.mrc"
    if refine:
        if not reference.is_file():
            raise InputFileError(reference, "missing: --refine refines against the run's map", "--refine")
        if stack_info(reference).size != source.image_size:
            raise InputFileError(
                reference,
                f"the map is {stack_info(reference).size} px but the particles are {source.image_size} px",
                "--refine",
            )
    outputs = [out]
    if str(config.source.options.get("path") or "").lower().endswith(".cs"):
        outputs.append(out.with_suffix(".cs"))  # write_pose_files writes one next to the star
    run_inputs = [run_dir / "config.json", ckpt, run_dir / MARKER, run_dir / "plugins.json"]
    refuse_input_overlap(outputs, [*source_input_paths(source), *run_inputs], "--out")
    for p in outputs:
        refuse_existing(p, "--out", overwrite)
    pipeline = build_pipeline(config, registry, BuildContext(source.image_size, source.pixel_size_angstrom))
    try:
        pipeline.load_state_dict(state["model"])
    except RuntimeError:
        raise InputFileError(
            ckpt,
            "the weights do not fit the model described by config.json (another run's checkpoint?)",
            "model",
        ) from None
    device = pick_device(config.train.device)
    pipeline.to(device)
    if not exact_volume and source.image_size <= MAX_SAMPLED_BOX:
        pipeline.volume = SampledVolume(pipeline.volume, source.image_size)
    index = np.arange(len(source))
    bar = ParticleProgress("infer", len(index), enabled=progress)
    pose = infer_poses_grid_averaged(
        pipeline,
        source,
        index,
        batch_size,
        device,
        average=average_views,
        recentre=recentre and trained_recentred(config, registry),
        progress=bar.update,
    )
    bar.close()
    if refine:
        import torch

        from cryoforge.engine.semi_amortized import refine_poses

        volume = torch.from_numpy(read_map(reference)[0])
        pose = refine_poses(source, index, pose, volume)
    write_pose_files(out, source, index, pose)
    return out


def encoder_run(run_dir: Path, plugins_dirs: list[str] | None = None) -> tuple[RunConfig, Path]:
    """The configuration and checkpoint of the encoder ``run_dir`` holds: its own; for a half-set
    run folder (no checkpoint of its own), half 1's, the frame of the run's ``map.mrc``; for a half
    folder (``half1``/``half2``, which has no ``config.json``), that half's, from its run folder."""
    from cryoforge.engine.halves import half_config
    from cryoforge.io.outputs import HALF_DIRS

    if not (run_dir / "config.json").is_file() and run_dir.name in HALF_DIRS:
        parent = run_dir.parent
        if (parent / "config.json").is_file():
            config = load_run_config(parent, plugins_dirs)
            if config.train.half_sets:
                return half_config(config, HALF_DIRS.index(run_dir.name)), run_dir / CHECKPOINT
    config = load_run_config(run_dir, plugins_dirs)
    if config.train.half_sets and not (run_dir / CHECKPOINT).is_file():
        return half_config(config, 0), run_dir / HALF_DIRS[0] / CHECKPOINT
    return config, run_dir / CHECKPOINT


def trains_encoder(config: RunConfig) -> bool:
    """Whether the run's schedule trains its encoder at all: the default schedule (``abinit``)
    does only with ``amortize_steps`` > 0; other schedules train it in their gradient stages."""
    if config.schedule.name != "abinit":
        return True
    from cryoforge.schedules.abinit import AbinitSchedule

    return AbinitSchedule.Options.model_validate(config.schedule.options).amortize_steps > 0


def encoder_trained(config: RunConfig, checkpoint: dict) -> bool:
    """Whether the run's encoder was trained: the default schedule (``abinit``) trains it only in
    its ``amortize`` stage, so a checkpoint without amortize steps holds an untrained encoder.
    Other schedules train it in their gradient stages (taken as trained)."""
    if config.schedule.name != "abinit":
        return True
    stages = (checkpoint.get("state") or {}).get("stages") or {}
    return int((stages.get("amortize") or {}).get("step", 0)) > 0


def _trained_pixel_size(run_dir: Path) -> float | None:
    """The pixel size (Å) of the images the run trained on: from its marker, else its map's header."""
    data = (read_run_marker(run_dir) or {}).get("data") or {}
    px = data.get("pixel_size_angstrom")
    if isinstance(px, (int, float)) and math.isfinite(px) and px > 0:
        return float(px)
    for name in ("map.mrc", "half1/map.mrc"):
        if (run_dir / name).is_file():
            v = read_voxel_size(run_dir / name)
            return v if math.isfinite(v) and v > 0 else None
    return None


def _trained_image_size(run_dir: Path) -> int | None:
    """The image size the run trained on: its exported map's box (``None`` before the first export)."""
    for name in ("map.mrc", "half1/map.mrc"):
        if (run_dir / name).is_file():
            return stack_info(run_dir / name).size
    return None
