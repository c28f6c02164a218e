"""Contract checks for component authors, shipped as a pytest plugin (entry point ``pytest11``).

In a plugin's tests::

    from cryoforge.testing import check_component

    def test_contract(tiny_dataset):
        check_component("volume", MyVolume)

Each check raises ``AssertionError`` with a message naming the component and what failed. The
``tiny_dataset`` fixture writes a small simulated dataset (``.star``, ``.mrcs``, ``.cs``) to a
temporary folder.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from cryoforge.options import Options
from cryoforge.roles import BASES
from cryoforge.types import BuildContext, CTFParams, Pose

TEST_L = 16
TEST_PX = 4.0

#: ``-o KEY VALUE`` settings of a test-sized run on :func:`write_tiny_dataset`'s data: cryoAI's
#: single stage, small networks, quiet (add ``train.max_steps`` and what the test is about)
TINY_RUN: dict[str, Any] = {
    "schedule.name": "cryoai",
    "encoder.channels": [8, 16],
    "encoder.head_hidden": [32],
    "volume.hidden_dim": 32,
    "train.batch_size": 8,
    "train.tensorboard": False,
    "train.progress": False,
}


TINY_MODEL: dict[str, Any] = {
    "encoder.channels": [8, 8],
    "encoder.head_hidden": [16],
    "volume.hidden_dim": 16,
    "train.batch_size": 8,
    "train.tensorboard": False,
    "train.progress": False,
    "train.pictures": False,
}
"""The smallest model and quiet training, for tests of what a run checks and writes (any schedule)."""


def torchrun_command(*cli_args: str, nproc: int = 2) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m cryoforge.cli ARGS``."""
    import sys

    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "cryoforge.cli",
        *cli_args,
    ]


def check_options(kind: str, cls: type) -> None:
    """Default options build; unknown keys are rejected; the class is a proper component."""
    assert issubclass(cls, BASES[kind]), f"{cls.__qualname__} must subclass cryoforge.{BASES[kind].__name__}"
    assert isinstance(getattr(cls, "name", None), str) and cls.name, f"{cls.__qualname__}: no `name`"
    assert (cls.__doc__ or "").strip(), f"{kind} {cls.name!r}: no docstring"
    assert issubclass(cls.Options, Options), f"{kind} {cls.name!r}: Options must subclass cryoforge.Options"
    try:
        cls.Options.model_validate({"definitely_not_an_option": 1})
    except ValidationError:
        pass
    else:
        raise AssertionError(f"{kind} {cls.name!r}: Options accept unknown keys (use extra='forbid')")


def _ctx() -> BuildContext:
    return BuildContext(image_size=TEST_L, pixel_size_angstrom=TEST_PX)


def _ctf(batch: int) -> CTFParams:
    f = lambda v: torch.full((batch,), float(v))
    return CTFParams(f(15000), f(14000), f(30), f(300), f(2.7), f(0.1), f(0), f(0))


def _assert_grads(name: str, module: torch.nn.Module) -> None:
    for pname, p in module.named_parameters():
        if not p.requires_grad:
            continue
        assert p.grad is not None, f"{name}: no gradient reaches parameter {pname!r}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {pname!r}"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient for parameter {pname!r}"


def check_encoder(cls: type, options: dict[str, Any] | None = None) -> None:
    """Poses have the right shapes, are proper rotations, finite, and train every parameter."""
    torch.manual_seed(0)
    enc = cls(cls.Options.model_validate(options or {}), _ctx())
    images = torch.randn(4, TEST_L, TEST_L)
    pose = enc(images)
    assert isinstance(pose, Pose), f"encoder {cls.name!r}: forward must return a Pose"
    assert pose.rotation.shape == (4, 3, 3), (
        f"encoder {cls.name!r}: rotation shape {tuple(pose.rotation.shape)}"
    )
    assert pose.shift_angstrom.shape == (4, 2), (
        f"encoder {cls.name!r}: shift shape {tuple(pose.shift_angstrom.shape)}"
    )
    R = pose.rotation.double()
    eye = torch.eye(3, dtype=torch.float64).expand_as(R)
    assert torch.allclose(R @ R.transpose(-1, -2), eye, atol=1e-4), (
        f"encoder {cls.name!r}: rotations not orthonormal"
    )
    assert torch.allclose(torch.linalg.det(R), torch.ones(4, dtype=torch.float64), atol=1e-4), (
        f"encoder {cls.name!r}: det(R) != 1"
    )
    assert torch.isfinite(pose.shift_angstrom).all(), f"encoder {cls.name!r}: non-finite shifts"
    target = torch.randn(4, 3, 3)
    ((pose.rotation - target).pow(2).sum() + pose.shift_angstrom.pow(2).sum()).backward()
    _assert_grads(f"encoder {cls.name!r}", enc)


def check_volume(cls: type, options: dict[str, Any] | None = None, tmp_path: Path | None = None) -> None:
    """Complex, finite, Hermitian (``V(-k) = conj V(k)``), trainable, exportable to ``.mrc``."""
    torch.manual_seed(0)
    vol = cls(cls.Options.model_validate(options or {}), _ctx())
    k = (torch.rand(257, 3) - 0.5) * 0.9
    k[0] = 0
    v = vol(k)
    assert v.shape == (257,), f"volume {cls.name!r}: output shape {tuple(v.shape)} for (257, 3) input"
    assert v.is_complex(), f"volume {cls.name!r}: output must be complex"
    assert torch.isfinite(torch.view_as_real(v)).all(), f"volume {cls.name!r}: non-finite values"
    vneg = vol(-k)
    assert torch.allclose(vneg, v.conj(), atol=1e-5, rtol=1e-4), f"volume {cls.name!r}: not Hermitian"
    assert abs(float(v[0].imag.detach())) < 1e-6, f"volume {cls.name!r}: V(0) must be real"
    batched = vol(k.reshape(1, 257, 3))
    assert batched.shape == (1, 257), f"volume {cls.name!r}: must accept (..., 3) inputs"
    (v.abs() ** 2).sum().backward()
    _assert_grads(f"volume {cls.name!r}", vol)
    from cryoforge.volumes.base import volume_to_map

    vmap = volume_to_map(vol, TEST_L)
    assert vmap.shape == (TEST_L,) * 3 and torch.isfinite(vmap).all(), f"volume {cls.name!r}: bad map export"
    if tmp_path is not None:
        from cryoforge.io.mrc import read_map, write_mrc

        write_mrc(tmp_path / f"{cls.name}.mrc", vmap.numpy(), TEST_PX)
        back, voxel = read_map(tmp_path / f"{cls.name}.mrc")
        assert voxel == pytest.approx(TEST_PX) and np.allclose(back, vmap.numpy()), (
            f"volume {cls.name!r}: .mrc export does not round-trip"
        )


def _blob_volume() -> torch.nn.Module:
    from cryoforge.roles import Volume

    class Blob(Volume):
        """A Gaussian blob (analytic Fourier transform), with one trainable amplitude."""

        name = "_blob"

        def __init__(self) -> None:
            super().__init__(Options(), _ctx())
            self.amp = torch.nn.Parameter(torch.tensor(1.0))

        def forward(self, coords: torch.Tensor) -> torch.Tensor:
            val = self.amp * torch.exp(-(coords**2).sum(-1) * 40)
            return torch.complex(val, torch.zeros_like(val))

    return Blob()


def check_imaging(cls: type, options: dict[str, Any] | None = None) -> None:
    """Real ``(B, L, L)`` finite images, with gradients flowing back into the volume."""
    from cryoforge.ops.rotations import random_rotations

    im = cls(cls.Options.model_validate(options or {}), _ctx())
    vol = _blob_volume()
    pose = Pose(random_rotations(3, torch.Generator().manual_seed(0)), torch.randn(3, 2))
    for ctf in (None, _ctf(3)):
        out = im(vol, pose, ctf)
        assert out.shape == (3, TEST_L, TEST_L), f"imaging {cls.name!r}: output shape {tuple(out.shape)}"
        assert not out.is_complex() and torch.isfinite(out).all(), f"imaging {cls.name!r}: not real/finite"
    out.pow(2).sum().backward()
    assert vol.amp.grad is not None and vol.amp.grad != 0, f"imaging {cls.name!r}: no gradient to the volume"


def check_loss(cls: type, options: dict[str, Any] | None = None) -> None:
    """Views are known; ``reduce`` returns a scalar and a per-particle winning view index."""
    from cryoforge.losses.views import VIEWS

    loss = cls(cls.Options.model_validate(options or {}), _ctx())
    assert loss.views and all(v in VIEWS for v in loss.views), (
        f"loss {cls.name!r}: unknown views {loss.views}"
    )
    errors = torch.rand(len(loss.views), 5, requires_grad=True)
    value, winner = loss.reduce(errors)
    assert value.ndim == 0 and torch.isfinite(value), f"loss {cls.name!r}: reduce must return a finite scalar"
    assert winner.shape == (5,) and winner.dtype == torch.long, f"loss {cls.name!r}: winner must be (B,) long"
    assert int(winner.max()) < len(loss.views), f"loss {cls.name!r}: winner out of range"
    value.backward()
    assert errors.grad is not None, f"loss {cls.name!r}: no gradient to the errors"
    per = loss.per_particle(torch.randn(5, TEST_L, TEST_L), torch.randn(5, TEST_L, TEST_L))
    assert per.shape == (5,), f"loss {cls.name!r}: per_particle must return (B,)"


def check_source(cls: type, options: dict[str, Any]) -> None:
    """Length, image shapes/dtype, order, finite values, CTF table length."""
    src = cls(cls.Options.model_validate(options), BuildContext())
    n = len(src)
    assert n > 0, f"source {cls.name!r}: empty"
    idx = np.array([n - 1, 0])
    imgs = src.read_images(idx)
    L = src.image_size
    assert imgs.shape == (2, L, L) and imgs.dtype == np.float32, (
        f"source {cls.name!r}: images {imgs.shape} {imgs.dtype}"
    )
    assert np.isfinite(imgs).all(), f"source {cls.name!r}: non-finite pixels"
    assert np.allclose(src.read_images(idx[::-1])[::-1], imgs), f"source {cls.name!r}: order not kept"
    assert src.pixel_size_angstrom > 0, f"source {cls.name!r}: pixel size must be > 0"
    if src.ctf is not None:
        assert len(src.ctf) == n, f"source {cls.name!r}: CTF table length {len(src.ctf)} != {n}"


def check_schedule(
    cls: type, options: dict[str, Any] | None = None, kinds: Iterable[str] | None = None
) -> None:
    """``stages()`` is a non-empty list of ``Stage`` with unique names, known kinds, bands in (0, 1].

    ``kinds`` are the stage kinds the engine runs (``cryoforge.engine.RUNNERS``); ``None`` skips
    that check.
    """
    from cryoforge.schedules.base import Stage

    sched = cls(cls.Options.model_validate(options or {}), _ctx())
    stages = sched.stages()
    assert isinstance(stages, list) and stages, (
        f"schedule {cls.name!r}: stages() must return a non-empty list"
    )
    for s in stages:
        assert isinstance(s, Stage), f"schedule {cls.name!r}: {s!r} is not a cryoforge.Stage"
        assert all(0 < b <= 1 for b in s.band), f"schedule {cls.name!r}: stage {s.name!r} band {s.band}"
        assert s.max_steps is None or s.max_steps >= 1, f"schedule {cls.name!r}: stage {s.name!r} max_steps"
        assert s.epochs is None or s.epochs >= 0, f"schedule {cls.name!r}: stage {s.name!r} epochs"
    names = [s.name for s in stages]
    assert len(set(names)) == len(names), f"schedule {cls.name!r}: stage names not unique: {names}"
    if kinds is not None:
        known = set(kinds)
        unknown = [s.kind for s in stages if s.kind not in known]
        assert not unknown, f"schedule {cls.name!r}: unknown stage kinds {unknown} (known: {sorted(known)})"
    assert sched.stages() == stages, f"schedule {cls.name!r}: stages() differs between calls"


CHECKS = {
    "encoder": check_encoder,
    "volume": check_volume,
    "imaging": check_imaging,
    "loss": check_loss,
    "schedule": check_schedule,
}


def check_component(kind: str, cls: type, options: dict[str, Any] | None = None, **kwargs: Any) -> None:
    """Run every contract check that applies to a component of ``kind``."""
    check_options(kind, cls)
    if kind == "source":
        check_source(cls, options or {})
    else:
        CHECKS[kind](cls, options, **kwargs)


def write_tiny_dataset(folder: Path, n: int = 24, L: int = TEST_L, seed: int = 0) -> dict[str, Path]:
    """A small simulated dataset: ``particles.star``/``.mrcs``, ``particles.cs``, ``map.mrc``."""
    from cryoforge.io.cryosparc import write_cs
    from cryoforge.io.mrc import write_mrc
    from cryoforge.io.star import read_star
    from cryoforge.simulation.simulate import SimulationSettings, simulate

    folder.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(seed)
    r = np.arange(L) - L // 2
    z, y, x = np.meshgrid(r, r, r, indexing="ij")
    vol = np.zeros((L, L, L), np.float32)
    for _ in range(4):
        c = g.uniform(-L / 6, L / 6, 3)
        vol += np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * (L / 12) ** 2)).astype(
            np.float32
        )
    write_mrc(folder / "truth.mrc", vol, TEST_PX)
    res = simulate(
        folder / "truth.mrc",
        folder,
        SimulationSettings(n_particles=n, snr=10.0, seed=seed, defocus_median_angstrom=10000),
    )
    write_cs(folder / "particles.cs", read_star(res.star), "particles.mrcs")
    return {"star": res.star, "mrcs": res.stack, "cs": folder / "particles.cs", "map": res.map}


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> dict[str, Path]:
    """Paths of a small simulated dataset (see :func:`write_tiny_dataset`)."""
    return write_tiny_dataset(tmp_path / "tiny")


def assert_one_line_error(result: Any, *needles: str) -> str:
    """A CLI result (click's ``CliRunner``) that failed as a user error: exit 2, one ``Error:`` line.

    The line must contain every string of ``needles``; returns it.
    """
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    assert "Traceback" not in result.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def copy_dataset(paths: dict[str, Path], folder: Path) -> dict[str, Path]:
    """Copy the files of a dataset (e.g. :func:`write_tiny_dataset`'s) into ``folder``; the new paths."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    out = {k: folder / p.name for k, p in paths.items()}
    for k, p in paths.items():
        shutil.copy(p, out[k])
    return out
