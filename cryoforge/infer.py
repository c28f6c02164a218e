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
from cryoforge.io.mrc import stack_info
from cryoforge.io.star import write_star
from cryoforge.io.table import ParticleTable
from cryoforge.io.writable import check_writable_file
from cryoforge.types import BuildContext


def infer_run(
    run_dir: Path,
    particles: str | None,
    out_star: str | None,
    batch_size: int = 512,
    plugins_dirs: list[str] | None = None,
) -> Path:
    """Predict poses for every particle (dataset order) with the encoder of ``run_dir``.

    Everything is checked before any image is read: the run (a checkpoint with an encoder), the
    output folder, and that the particles have the box the encoder was trained on.
    """
    cfg_path, ckpt = run_dir / "config.json", run_dir / CHECKPOINT
    for p in (cfg_path, ckpt):
        if not p.is_file():
            raise InputFileError(p, "missing: not a finished cryoforge run directory", "RUN_DIR")
    out = Path(out_star) if out_star else run_dir / "inferred_poses.star"
    check_writable_file(out, "--out")
    config = load_config_file(cfg_path)
    if config.train.gt_poses:
        raise InputFileError(
            cfg_path,
            "this run fitted the known poses (train.gt_poses): it has no encoder to predict poses with",
            "train.gt_poses",
        )
    trained_size = _trained_image_size(run_dir)
    state = load_checkpoint(ckpt)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise InputFileError(ckpt, "not a cryoforge checkpoint (no model weights)", "model")
    if not any(k.startswith("encoder.") for k in state["model"]):
        raise InputFileError(ckpt, "the checkpoint holds no encoder weights: nothing to infer with", "model")
    if particles:
        from cryoforge.config import apply_override
        from cryoforge.sources import SUFFIX_TO_SOURCE

        config = apply_override(config, "source.path", particles)
        config = apply_override(config, "source.name", SUFFIX_TO_SOURCE.get(Path(particles).suffix, "star"))
    config = config.model_copy(update={"train": config.train.model_copy(update={"gt_poses": False})})
    config, registry, source = prepare(config, plugins_dirs)
    if trained_size is not None and source.image_size != trained_size:
        raise InputFileError(
            source.path,
            f"images are {source.image_size} px (after source.downsample_to) but the run was trained "
            f"on {trained_size} px images; give particles with the run's box",
            "--particles",
        )
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


def _trained_image_size(run_dir: Path) -> int | None:
    """The image size the run trained on: its exported map's box (``None`` before the first export)."""
    for name in ("map.mrc", "half1/map.mrc"):
        if (run_dir / name).is_file():
            return stack_info(run_dir / name).size
    return None
