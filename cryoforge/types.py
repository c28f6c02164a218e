"""Frozen value types passed between roles.

Shapes use ``B`` for the batch and ``L`` for the image side in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass(frozen=True)
class Pose:
    """Particle poses.

    Attributes
    ----------
    rotation
        ``(B, 3, 3)`` RELION ZYZ rotation matrices: the slice of image frequency ``k`` is the volume
        at ``Rᵀ k``.
    shift_angstrom
        ``(B, 2)`` in-plane shift ``(x, y)`` in Å; the rendered image is translated by it.
    """

    rotation: torch.Tensor
    shift_angstrom: torch.Tensor

    def to(self, device: torch.device | str) -> Pose:
        return Pose(self.rotation.to(device), self.shift_angstrom.to(device))

    def index(self, idx: torch.Tensor) -> Pose:
        return Pose(self.rotation[idx], self.shift_angstrom[idx])

    @staticmethod
    def cat(parts: list[Pose]) -> Pose:
        """The poses of ``parts`` one after another (along the batch)."""
        return Pose(torch.cat([p.rotation for p in parts]), torch.cat([p.shift_angstrom for p in parts]))


@dataclass(frozen=True)
class CTFParams:
    """Per-particle contrast transfer function parameters (RELION / CTFFIND convention).

    Every attribute is a ``(B,)`` tensor. ``pixel_size_angstrom`` is the pixel size of each
    particle's image as the model sees it (its optics group's, after any downsampling); ``None``
    means the data's single pixel size (:class:`BuildContext`).
    """

    defocus_u_angstrom: torch.Tensor
    defocus_v_angstrom: torch.Tensor
    astigmatism_angle_deg: torch.Tensor
    voltage_kv: torch.Tensor
    cs_mm: torch.Tensor
    amplitude_contrast: torch.Tensor
    phase_shift_deg: torch.Tensor
    bfactor_angstrom2: torch.Tensor
    pixel_size_angstrom: torch.Tensor | None = None

    def _map(self, fn) -> CTFParams:  # type: ignore[no-untyped-def]
        return replace(
            self, **{f.name: None if (v := getattr(self, f.name)) is None else fn(v) for f in fields(self)}
        )

    def to(self, device: torch.device | str) -> CTFParams:
        return self._map(lambda v: v.to(device))

    def index(self, idx: torch.Tensor) -> CTFParams:
        return self._map(lambda v: v[idx])

    def __len__(self) -> int:
        return int(self.defocus_u_angstrom.shape[0])

    def pixel_sizes(self, default_angstrom: float, like: torch.Tensor) -> torch.Tensor:
        """``(B, 1)`` each particle's pixel size in Å (``default_angstrom`` when unknown), as ``like``."""
        if self.pixel_size_angstrom is not None:
            return self.pixel_size_angstrom.to(like.device, like.dtype).reshape(-1, 1)
        return torch.full((len(self), 1), default_angstrom, dtype=like.dtype, device=like.device)

    def values_at(
        self, freqs_px: torch.Tensor, default_pixel_size_angstrom: float, pixel_scale: float = 1.0
    ) -> torch.Tensor:
        """``(B, M)`` CTF at ``(M, 2)`` frequencies in cycles/px, each particle at its own pixel size.

        ``pixel_scale`` multiplies the pixel sizes (a Fourier crop's factor, original / cropped
        box). Computed in the dtype of ``freqs_px``.
        """
        from cryoforge.ops.ctf import ctf_2d

        px = self.pixel_sizes(default_pixel_size_angstrom, freqs_px) * pixel_scale
        own = self.pixel_size_angstrom  # tested where it lives (CPU): no wait for a GPU per call
        if len(px) and (own is None or bool((own == own.reshape(-1)[0]).all())):
            freqs = freqs_px / px[0]  # one pixel size: the frequencies are shared by the batch
        else:
            freqs = freqs_px[None] / px[..., None]
        return ctf_2d(
            freqs,
            self.defocus_u_angstrom,
            self.defocus_v_angstrom,
            self.astigmatism_angle_deg,
            self.voltage_kv,
            self.cs_mm,
            self.amplitude_contrast,
            self.phase_shift_deg,
            self.bfactor_angstrom2,
        )

    @staticmethod
    def cat(parts: list[CTFParams]) -> CTFParams:
        out = {}
        for f in fields(CTFParams):
            vals = [getattr(p, f.name) for p in parts]
            out[f.name] = None if any(v is None for v in vals) else torch.cat(vals)
        return CTFParams(**out)


@dataclass(frozen=True)
class ParticleBatch:
    """A batch read from a source.

    Attributes
    ----------
    images
        ``(B, L, L)`` float32, row = y, column = x, centre at ``(L//2, L//2)``.
    ctf
        CTF parameters of the batch, or ``None`` when the data carry no CTF.
    index
        ``(B,)`` int64 positions of the particles in the dataset.
    pose
        Known poses (ground truth or a previous refinement), or ``None``.
    """

    images: torch.Tensor
    ctf: CTFParams | None
    index: torch.Tensor
    pose: Pose | None = None

    def to(self, device: torch.device | str) -> ParticleBatch:
        return ParticleBatch(
            self.images.to(device),
            None if self.ctf is None else self.ctf.to(device),
            self.index.to(device),
            None if self.pose is None else self.pose.to(device),
        )


@dataclass(frozen=True)
class BuildContext:
    """What a component may need to know about the data when it is built.

    Attributes
    ----------
    image_size
        ``L``, the side of the (possibly downsampled) images in pixels.
    pixel_size_angstrom
        Pixel size of those images in Å.
    """

    image_size: int = 32
    pixel_size_angstrom: float = 1.0
