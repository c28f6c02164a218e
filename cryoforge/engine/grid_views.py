"""Pose inference averaged over the 8 symmetries of the pixel grid (test-time augmentation).

A particle image turned by 90° or mirrored is, exactly, the image of the same particle at
another known pose (:func:`cryoforge.ops.rotations.grid_symmetry_pose`), and it is as likely under
the data: random in-plane angles, random astigmatism, white noise. The encoder therefore gives 8
estimates of every pose, one per moved copy. Mapped back, they scatter around the truth with
partly independent errors; their mean is more accurate than any one. The pose the pipeline
picks (its loss's choice among its own views) is the anchor: estimates further than
``max_deg`` from it are left out, so an encoder that confuses symmetry mates is not averaged
across them. Still one pass of the encoder per copy, with no search.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from cryoforge.config import RunConfig
from cryoforge.engine.batches import make_batch
from cryoforge.ops.images import GRID_SYMMETRIES_XY, apply_grid_symmetry
from cryoforge.ops.rotations import consensus_rotations, grid_symmetry_pose
from cryoforge.ops.shift import translate_images
from cryoforge.pipeline import Pipeline
from cryoforge.registry import Registry
from cryoforge.roles import Source
from cryoforge.types import CTFParams, ParticleBatch, Pose


def _inverse(A: tuple[tuple[int, int], tuple[int, int]]) -> tuple[tuple[int, int], tuple[int, int]]:
    return ((A[0][0], A[1][0]), (A[0][1], A[1][1]))  # Aᵀ = A⁻¹


@torch.no_grad()
def grid_averaged_poses(
    pipeline: Pipeline, images: torch.Tensor, anchor: Pose, max_deg: float, ctf: CTFParams | None
) -> Pose:
    """Average the encoder's poses over the 8 grid symmetries of ``images``, around ``anchor``.

    Parameters
    ----------
    images
        ``(B, L, L)`` particle images.
    anchor
        ``(B,)`` poses the estimates must agree with (the pipeline's own choice).
    max_deg
        Agreement radius (geodesic degrees).
    ctf
        The images' CTF (the encoder reads them through its ``prepare``, before the moves).

    Returns
    -------
    ``(B,)`` poses: the chordal mean rotation and the mean shift (Å) of the agreeing estimates.
    """
    assert pipeline.encoder is not None
    rots, shifts = [], []
    images = pipeline.encoder_images(images, ctf)
    for A in GRID_SYMMETRIES_XY.values():
        pose = pipeline.encoder(apply_grid_symmetry(images, A))
        r, t = grid_symmetry_pose(_inverse(A), pose.rotation, pose.shift_angstrom)
        rots.append(r)
        shifts.append(t)
    R = torch.stack(rots)
    rotation, agree = consensus_rotations(R, anchor.rotation.to(R), max_deg)
    w = agree.to(R.dtype)[..., None]
    shift = ((w * torch.stack(shifts)).sum(0) + anchor.shift_angstrom) / (w.sum(0) + 1)
    return Pose(rotation, shift)


def infer_poses_grid_averaged(
    pipeline: Pipeline,
    source: Source,
    index: np.ndarray,
    batch_size: int,
    device: torch.device,
    max_deg: float = 20.0,
    average: bool = True,
    recentre: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Pose:
    """:func:`~cryoforge.engine.batches.infer_poses`, then :func:`grid_averaged_poses` per batch.

    With ``recentre`` (an encoder trained with the amortize stage's ``recentre``), a second pass
    reads each image centred by the first pass's origin: its rotation, and its origin added to the
    first, are the pose (:func:`recentred_pass`). ``average=False`` keeps one pass per image (two with
    ``recentre``), no grid averaging. ``progress`` is called with the particles done after each batch.
    """
    was_training = pipeline.training
    pipeline.eval()
    rots, shifts = [], []
    with torch.no_grad():
        for s in range(0, len(index), batch_size):
            batch = make_batch(source, index[s : s + batch_size], device)
            anchor = pipeline(batch).pose
            first = torch.zeros_like(anchor.shift_angstrom)
            if recentre:
                batch, anchor, first = recentred_pass(pipeline, batch, anchor, source.pixel_size_angstrom)
            if average:
                pose = grid_averaged_poses(pipeline, batch.images, anchor, max_deg, batch.ctf)
            else:
                pose = anchor
            rots.append(pose.rotation.cpu())
            shifts.append((pose.shift_angstrom + first).cpu())
            if progress is not None:
                progress(min(s + batch_size, len(index)))
    pipeline.train(was_training)
    return Pose(torch.cat(rots), torch.cat(shifts))


def recentred_pass(
    pipeline: Pipeline, batch: ParticleBatch, first: Pose, pixel_size_angstrom: float
) -> tuple[ParticleBatch, Pose, torch.Tensor]:
    """The second pass: each image translated by its first-pass origin (so the particle sits near the
    box centre), and the pipeline's pose of it.

    Returns the centred batch, its pose (origins relative to the first pass's) and the first
    pass's origins ``(B, 2)`` in Å, which the final origin adds.
    """
    images = translate_images(
        batch.images, (first.shift_angstrom / pixel_size_angstrom).to(batch.images.dtype)
    )
    centred = ParticleBatch(images, batch.ctf, batch.index)
    return centred, pipeline(centred).pose, first.shift_angstrom


def trained_recentred(config: RunConfig, registry: Registry) -> bool:
    """Whether the run's encoder learned centred particles (an amortize stage with ``recentre``):
    inference then reads each image a second time, centred by the first pass's origin."""
    from cryoforge.engine.stages import schedule_stages, stage_options

    # the stage's options with their defaults filled in: a run that leaves ``recentre`` at its
    # default trained with it too (reading the raw options missed it: one pass, 7.2° instead of 5.3°)
    return any(
        s.kind == "amortize" and stage_options(s).recentre > 0 for s in schedule_stages(config, registry)
    )
