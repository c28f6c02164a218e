"""Particles to the device: training batches and no-gradient pose inference."""

from __future__ import annotations

import numpy as np
import torch

from cryoforge.ops.shift import translate_images
from cryoforge.pipeline import Pipeline
from cryoforge.roles import Source
from cryoforge.types import ParticleBatch, Pose


def make_batch(source: Source, index: np.ndarray, device: torch.device) -> ParticleBatch:
    """The particles ``index`` of ``source`` (images, CTF, known poses) on ``device``."""
    idx = torch.as_tensor(index, dtype=torch.long)
    images = torch.from_numpy(source.read_images(index))
    ctf = None if source.ctf is None else source.ctf.index(idx)
    pose = None if source.poses is None else source.poses.index(idx)
    return ParticleBatch(images, ctf, idx, pose).to(device)


@torch.no_grad()
def infer_poses(
    pipeline: Pipeline, source: Source, index: np.ndarray, batch_size: int, device: torch.device
) -> Pose:
    """Poses for ``index`` in dataset order, in large no-grad batches (evaluation mode)."""
    was_training = pipeline.training
    pipeline.eval()
    rots, shifts = [], []
    for s in range(0, len(index), batch_size):
        out = pipeline(make_batch(source, index[s : s + batch_size], device))
        rots.append(out.pose.rotation.cpu())
        shifts.append(out.pose.shift_angstrom.cpu())
    pipeline.train(was_training)
    return Pose(torch.cat(rots), torch.cat(shifts))


@torch.no_grad()
def encoder_poses(
    pipeline: Pipeline,
    source: Source,
    index: np.ndarray,
    batch_size: int,
    device: torch.device,
    recentre: bool = False,
) -> Pose:
    """The encoder's own poses for ``index`` (one pass per image, no rendering).

    :func:`infer_poses` runs the whole pipeline, whose loss picks among the encoder's views by
    rendering each against the volume: at L=64 on a CPU that rendering costs ~8 ms an image, several
    times the encoder. Where a local refinement follows (the ``infer`` stage), the encoder's pose
    of the image as given is enough.
    """
    assert pipeline.encoder is not None
    encoder = pipeline.encoder
    was_training = encoder.training
    encoder.eval()
    rots, shifts = [], []
    for s in range(0, len(index), batch_size):
        batch = make_batch(source, index[s : s + batch_size], device)
        images = pipeline.encoder_images(batch.images, batch.ctf)
        pose = encoder(images)
        if recentre:
            first = pose.shift_angstrom
            pose = encoder(translate_images(images, (first / source.pixel_size_angstrom).to(images.dtype)))
            pose = Pose(pose.rotation, pose.shift_angstrom + first)
        rots.append(pose.rotation.cpu())
        shifts.append(pose.shift_angstrom.cpu())
    encoder.train(was_training)
    return Pose(torch.cat(rots), torch.cat(shifts))
