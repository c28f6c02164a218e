"""The abstract base class of each role.

A component subclasses one of these, sets ``name``, defines a nested ``Options`` model and is
built as ``cls(options, ctx)`` with ``ctx`` a :class:`cryoforge.types.BuildContext`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn

from cryoforge.options import Options
from cryoforge.types import BuildContext, CTFParams, Pose

if TYPE_CHECKING:
    from cryoforge.schedules.base import Stage


class Component:
    """Mixin holding what every component has: a name, options and a build context."""

    name: ClassVar[str]
    Options: ClassVar[type[Options]] = Options

    def _init_component(self, options: Options, ctx: BuildContext) -> None:
        self.options = options
        self.ctx = ctx


class Source(Component, ABC):
    """A particle stack with per-particle CTF (and poses when known), read lazily.

    Attributes set by implementations: ``path``, ``image_size`` (L after any downsampling),
    ``pixel_size_angstrom`` (of the returned images), ``ctf`` (:class:`CTFParams` of all
    particles, or ``None``), ``poses`` (:class:`Pose` of all particles, or ``None``),
    ``origins_angstrom`` (``(N, 2)`` input origins in Å, RELION's sign, when the file has them,
    with or without angles; else ``None``).
    """

    image_size: int
    pixel_size_angstrom: float
    ctf: CTFParams | None = None
    poses: Pose | None = None
    origins_angstrom: torch.Tensor | None = None

    def __init__(self, options: Options, ctx: BuildContext) -> None:
        self._init_component(options, ctx)

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def read_images(self, index: np.ndarray) -> np.ndarray:
        """Images at ``index`` (``(B,)`` int), as ``(B, L, L)`` float32, in that order."""


class Encoder(Component, nn.Module, ABC):
    """Images → poses. ``forward(images (B, L, L)) -> Pose``.

    The pipeline passes each batch through :meth:`prepare` (with its CTF) first, before the views,
    grid moves and recentring that training and inference apply. It must come first: the π view
    and translations commute with a CTF filter, but a grid move (90° turn, mirror) also moves an
    astigmatic CTF, so the moved image of a prepared one is the moved particle prepared with its
    moved CTF, as the encoder should see it, while preparing a moved image with the unmoved CTF
    would not be.
    """

    def __init__(self, options: Options, ctx: BuildContext) -> None:
        nn.Module.__init__(self)
        self._init_component(options, ctx)

    def prepare(self, images: torch.Tensor, ctf: CTFParams | None) -> torch.Tensor:
        """What the encoder reads of ``(B, L, L)`` images with CTF ``ctf`` (default: the images)."""
        return images

    @abstractmethod
    def forward(self, images: torch.Tensor) -> Pose: ...


class Volume(Component, nn.Module, ABC):
    """A map in Fourier space.

    ``forward(coords (..., 3)) -> (...)`` complex: the value at 3D spatial frequency
    ``(kx, ky, kz)`` in cycles/pixel (Nyquist = 0.5). Values are the 3D DFT of the real-space map
    divided by L, so central slices are the orthonormal 2D DFTs of projections. Implementations
    must be Hermitian: ``V(-k) = conj(V(k))``.
    """

    recommended_lr: ClassVar[float] = 1e-3
    """Adam learning rate used when ``train.lr_volume`` is not set."""

    def __init__(self, options: Options, ctx: BuildContext) -> None:
        nn.Module.__init__(self)
        self._init_component(options, ctx)

    @abstractmethod
    def forward(self, coords: torch.Tensor) -> torch.Tensor: ...


class Imaging(Component, nn.Module, ABC):
    """Volume + pose + CTF → predicted images ``(B, L, L)``."""

    def __init__(self, options: Options, ctx: BuildContext) -> None:
        nn.Module.__init__(self)
        self._init_component(options, ctx)

    @abstractmethod
    def forward(self, volume: Volume, pose: Pose, ctf: CTFParams | None) -> torch.Tensor: ...


class Loss(Component, nn.Module, ABC):
    """Compares predicted and observed images and owns the problem's symmetries.

    ``views`` names the image transforms the pipeline must encode and render (see
    :mod:`cryoforge.losses.views`); :meth:`reduce` receives the per-particle error of every view,
    ``(V, B)``, and returns the scalar loss and, per particle, the index of the view that won.
    """

    views: ClassVar[tuple[str, ...]] = ("identity",)

    def __init__(self, options: Options, ctx: BuildContext) -> None:
        nn.Module.__init__(self)
        self._init_component(options, ctx)

    def per_particle(self, predicted: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """``(B,)`` mean squared error per particle."""
        return (predicted - observed).pow(2).flatten(1).mean(1)

    @abstractmethod
    def reduce(self, errors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class Schedule(Component, ABC):
    """What trains when: the stages of a run, executed in order by the engine.

    :meth:`stages` returns :class:`cryoforge.schedules.base.Stage` values; each names the engine
    runner that executes it (``kind``), its pose estimator, frequency band and budget.
    """

    def __init__(self, options: Options, ctx: BuildContext) -> None:
        self._init_component(options, ctx)

    @abstractmethod
    def stages(self) -> list[Stage]:
        """The stages in the order they run; names are unique within the schedule."""


BASES: dict[str, type] = {
    "source": Source,
    "encoder": Encoder,
    "volume": Volume,
    "imaging": Imaging,
    "loss": Loss,
    "schedule": Schedule,
}
