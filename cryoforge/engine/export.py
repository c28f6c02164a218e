"""Exports: the map (``map.mrc``) and a pose per particle (``poses.star``), now and then and at the end."""

from __future__ import annotations

import logging
import time

from cryoforge.engine.batches import infer_poses
from cryoforge.engine.callbacks import Callback, Exported, StepInfo
from cryoforge.engine.context import RunContext
from cryoforge.engine.pose_files import write_pose_files
from cryoforge.io.mrc import write_mrc
from cryoforge.volumes.base import CONTRAST_HINT, density_is_mostly_negative, volume_to_map

log = logging.getLogger("cryoforge")


def export(ctx: RunContext) -> Exported:
    """Write the map and the poses, then tell the callbacks (``on_export``).

    The poses come from the shared pose table ``ctx.poses`` when a stage left one (a search or
    refinement: the semi-amortized result), else from the encoder (inferred in dataset order);
    with neither, no ``poses.star`` is written. The poses keep the input's format and columns
    (:mod:`cryoforge.engine.pose_files`); a cryoSPARC input also gets ``poses.cs``. While only
    a searched subset holds poses (before the ``infer`` stage), the files hold that subset.
    """
    source, index = ctx.source, ctx.index
    vmap = volume_to_map(ctx.pipeline.volume, source.image_size)
    ctx.result.map_path = ctx.run_dir / "map.mrc"
    write_mrc(ctx.result.map_path, vmap.numpy(), source.pixel_size_angstrom)
    pose = ctx.poses
    if pose is None and ctx.pipeline.encoder is not None:
        batch = max(256, ctx.config.train.batch_size)
        pose = infer_poses(ctx.pipeline, source, index, batch, ctx.device)
    rows = ctx.table_rows()
    if pose is not None and rows is not None:  # mid-run: only the searched subset holds poses yet
        index, pose = index[rows.numpy()], pose.index(rows)
    ctx.result.poses = None if pose is None else pose.to("cpu")
    if pose is not None:
        ctx.result.star_path = ctx.run_dir / "poses.star"
        write_pose_files(ctx.result.star_path, source, index, pose)
    exported = Exported(
        vmap,
        ctx.result.map_path,
        pose,
        ctx.result.star_path if pose is not None else None,
        None if rows is None else index,
    )
    ctx.emit("on_export", exported)
    return exported


class ExportCallback(Callback):
    """Exports every ``every_s`` seconds (outside the training clock) and at the end of the run.

    At the end it also warns (``RunResult.warnings``) when the map is mostly negative density.
    """

    def __init__(self, every_s: float, warn_contrast: bool = True) -> None:
        self.every_s = every_s
        self.warn_contrast = warn_contrast  # False: no stage fits the volume (a search alone)
        self.last = time.perf_counter()

    def on_step(self, ctx: RunContext, info: StepInfo) -> None:
        if time.perf_counter() - self.last > self.every_s:
            with ctx.clock.paused():
                export(ctx)
            self.last = time.perf_counter()

    def on_run_end(self, ctx: RunContext) -> None:
        exported = export(ctx)
        if self.warn_contrast and density_is_mostly_negative(exported.map):
            log.warning(CONTRAST_HINT)
            ctx.result.warnings.append(CONTRAST_HINT)
