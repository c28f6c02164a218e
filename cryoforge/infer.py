"""Pose inference with a trained run: the paper's evaluation mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryoforge.config import load_config_file
from cryoforge.engine.batches import infer_poses
from cryoforge.engine.build import build_pipeline
from cryoforge.engine.checkpoint import load_checkpoint
from cryoforge.engine.context import CHECKPOINT
from cryoforge.engine.run import pick_device, prepare
from cryoforge.errors import InputFileError
from cryoforge.io.outputs import MARKER, refuse_existing, refuse_input_overlap, source_input_paths
from cryoforge.io.star import write_star
from cryoforge.io.table import ParticleTable
from cryoforge.types import BuildContext


def infer_run(
    run_dir: Path, particles: str | None, out_star: str | None, batch_size: int = 512, overwrite: bool = False
) -> Path:
    """Predict poses for every particle (dataset order) with the encoder of ``run_dir``.

    The output (``out_star``, default ``RUN_DIR/inferred_poses.star``) must not exist unless
    ``overwrite``, and is never an input (the particles, their stacks, the run's files).
    """
    cfg_path, ckpt = run_dir / "config.json", run_dir / CHECKPOINT
    for p in (cfg_path, ckpt):
        if not p.is_file():
            raise InputFileError(p, "missing: not a finished cryoforge run directory", "RUN_DIR")
    config = load_config_file(cfg_path)
    if particles:
        from cryoforge.config import apply_override
        from cryoforge.sources import SUFFIX_TO_SOURCE

        config = apply_override(config, "source.path", particles)
        config = apply_override(config, "source.name", SUFFIX_TO_SOURCE.get(Path(particles).suffix, "star"))
    config = config.model_copy(update={"train": config.train.model_copy(update={"gt_poses": False})})
    config, registry, source = prepare(config)
    out = Path(out_star) if out_star else run_dir / "inferred_poses.star"
    run_inputs = [cfg_path, ckpt, run_dir / MARKER, run_dir / "plugins.json"]
    refuse_input_overlap([out], [*source_input_paths(source), *run_inputs], "--out")
    refuse_existing(out, "--out", overwrite)
    pipeline = build_pipeline(config, registry, BuildContext(source.image_size, source.pixel_size_angstrom))
    pipeline.load_state_dict(load_checkpoint(ckpt)["model"])
    device = pick_device(config.train.device)
    pipeline.to(device)
    index = np.arange(len(source))
    pose = infer_poses(pipeline, source, index, batch_size, device)
    t = source.table
    table = ParticleTable(
        path=out,
        image_names=t.image_names,
        ctf=t.ctf,
        rotations=pose.rotation.double().numpy(),
        shifts_angstrom=pose.shift_angstrom.double().numpy(),
        pixel_size_angstrom=source.original_pixel_size_angstrom,
        box_size=source.original_size,
        has_ctf=source.ctf is not None,
    )
    write_star(out, table)
    return out
