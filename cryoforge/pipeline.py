"""One forward pass: views → encoder → imaging → loss. No role-specific branches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cryoforge.losses.views import VIEWS
from cryoforge.ops.filters import lowpass_disk
from cryoforge.roles import Encoder, Imaging, Loss, Volume
from cryoforge.types import CTFParams, ParticleBatch, Pose


@dataclass
class StepOutput:
    """What one forward pass produces.

    Attributes
    ----------
    loss
        Scalar to minimise.
    errors
        ``(V, B)`` per-view, per-particle errors.
    winner
        ``(B,)`` index of the view that won for each particle.
    pose
        The winning pose mapped back to the original image (detached).
    """

    loss: torch.Tensor
    errors: torch.Tensor
    winner: torch.Tensor
    pose: Pose


class Pipeline(nn.Module):
    """The encoder, volume, imaging model and loss wired into one differentiable pass."""

    def __init__(self, encoder: Encoder | None, volume: Volume, imaging: Imaging, loss: Loss) -> None:
        super().__init__()
        self.encoder, self.volume, self.imaging, self.loss = encoder, volume, imaging, loss
        unknown = [v for v in loss.views if v not in VIEWS]
        if unknown:
            raise ValueError(f"loss {loss.name!r} asks for unknown views {unknown}; known: {list(VIEWS)}")

    def encoder_images(self, images: torch.Tensor, ctf: CTFParams | None) -> torch.Tensor:
        """``(B, L, L)`` images as the encoder reads them (:meth:`cryoforge.roles.Encoder.prepare`).

        Where the imaging model does not apply the CTF (``imaging.apply_ctf = false``, e.g. stacks
        that are phase-flipped already), the encoder gets no CTF either.
        """
        assert self.encoder is not None
        if not getattr(self.imaging.options, "apply_ctf", True):
            ctf = None
        return self.encoder.prepare(images, ctf)

    def forward(self, batch: ParticleBatch, known_pose: Pose | None = None, band: float = 1.0) -> StepOutput:
        """Render every view the loss asks for and let the loss choose.

        With ``known_pose`` the encoder is bypassed and only the identity view is used. ``band``
        (a fraction of Nyquist) low-passes the predicted and observed images before the loss
        compares them (:func:`cryoforge.ops.filters.lowpass_disk`); the encoder sees the full images,
        as its :meth:`~cryoforge.roles.Encoder.prepare` gives them (the loss the images as they are).
        """
        if known_pose is not None:
            pred = self.imaging(self.volume, known_pose, batch.ctf)
            err = self.loss.per_particle(lowpass_disk(pred, band), lowpass_disk(batch.images, band))[None]
            zeros = torch.zeros(err.shape[1], dtype=torch.long, device=err.device)
            return StepOutput(err.mean(), err.detach(), zeros, known_pose)
        assert self.encoder is not None
        errors, poses = [], []
        seen = self.encoder_images(batch.images, batch.ctf)
        for view_name in self.loss.views:
            view = VIEWS[view_name]
            images = view.transform(batch.images)
            pose = self.encoder(view.transform(seen))
            pred = self.imaging(self.volume, pose, batch.ctf)
            errors.append(self.loss.per_particle(lowpass_disk(pred, band), lowpass_disk(images, band)))
            poses.append(view.pose_to_original(Pose(pose.rotation.detach(), pose.shift_angstrom.detach())))
        err = torch.stack(errors)
        loss, winner = self.loss.reduce(err)
        rot = torch.stack([p.rotation for p in poses])
        sh = torch.stack([p.shift_angstrom for p in poses])
        ar = torch.arange(winner.shape[0], device=winner.device)
        return StepOutput(loss, err.detach(), winner, Pose(rot[winner, ar], sh[winner, ar]))
