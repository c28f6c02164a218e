"""Pose inference with a trained run: the paper's evaluation mode."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cryoforge.config import apply_override
from cryoforge.engine.batches import infer_poses
from cryoforge.engine.build import build_pipeline
from cryoforge.engine.checkpoint import load_checkpoint
from cryoforge.engine.context import CHECKPOINT
from cryoforge.engine.portable import load_run_config
from cryoforge.engine.pose_files import write_pose_files
from cryoforge.engine.run import pick_device, prepare
from cryoforge.errors import InputFileError
from cryoforge.io.outputs import MARKER, refuse_existing, refuse_input_overlap, source_input_paths
from cryoforge.types import BuildContext


def infer_run(
    run_dir: Path,
    particles: str | None,
    out_star: str | None,
    batch_size: int = 512,
    ind: str | None = None,
    first: int | None = None,
    plugins_dirs: list[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Predict poses for every particle (dataset order) with the encoder of ``run_dir``.

    Works from any working directory (the run's ``config.json`` is portable). ``particles``
    replaces the run's particle file (its subset then no longer applies); ``ind``/``first`` pick
    a subset (see :func:`cryoforge.sources.subsets.select_particles`). The star keeps the input's
    columns (:func:`~cryoforge.engine.pose_files.write_pose_files`); a ``.cs`` input also gets a
    ``.cs`` next to it. The outputs (default ``RUN_DIR/inferred_poses.star``) must not exist
    unless ``overwrite``, and are never inputs (the particles, their stacks, the run's files);
    both are checked before any work.
    """
    run_dir = Path(run_dir)
    ckpt = run_dir / CHECKPOINT
    config = load_run_config(run_dir, plugins_dirs)
    if not ckpt.is_file():
        raise InputFileError(ckpt, "missing: not a finished cryoforge run directory", "RUN_DIR")
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
    out = Path(out_star) if out_star else run_dir / "inferred_poses.star"
    outputs = [out]
    if str(config.source.options.get("path") or "").lower().endswith(".cs"):
        outputs.append(out.with_suffix(".cs"))  # write_pose_files writes one next to the star
    run_inputs = [run_dir / "config.json", ckpt, run_dir / MARKER, run_dir / "plugins.json"]
    refuse_input_overlap(outputs, [*source_input_paths(source), *run_inputs], "--out")
    for p in outputs:
        refuse_existing(p, "--out", overwrite)
    pipeline = build_pipeline(config, registry, BuildContext(source.image_size, source.pixel_size_angstrom))
    pipeline.load_state_dict(load_checkpoint(ckpt)["model"])
    device = pick_device(config.train.device)
    pipeline.to(device)
    index = np.arange(len(source))
    pose = infer_poses(pipeline, source, index, batch_size, device)
    write_pose_files(out, source, index, pose)
    return out
