"""What a stage runner and the callbacks share: :class:`RunContext`, its clock and result."""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryoforge.config import RunConfig
from cryoforge.engine.collective import Collective
from cryoforge.errors import ConfigError
from cryoforge.pipeline import Pipeline
from cryoforge.registry import Registry
from cryoforge.roles import Encoder, Source
from cryoforge.schedules.base import Stage
from cryoforge.types import BuildContext, Pose

CHECKPOINT = "checkpoint.pt"


@dataclass
class RunResult:
    """Where a run wrote its outputs and what it measured."""

    run_dir: Path
    map_path: Path | None = None
    star_path: Path | None = None
    fsc_plot: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    pipeline: Pipeline | None = None
    warnings: list[str] = field(default_factory=list)
    paused: bool = False  # stopped at a pause time (half sets in lockstep), to be continued
    poses: Pose | None = None  # the last export's poses (rows follow the run's index), if any


class Clock:
    """Training time in seconds: wall time since the start, minus the time spent paused."""

    def __init__(self, start_s: float = 0.0) -> None:
        self._t0 = time.perf_counter() - start_s

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside (exports) does not count as training time."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self._t0 += time.perf_counter() - t


def new_state() -> dict[str, Any]:
    """The checkpointed run state before the first step."""
    return {"stage": 0, "step": 0, "elapsed_s": 0.0, "encoder": None, "stages": {}}


@dataclass
class RunContext:
    """One training run (one model on the particles ``index``), as runners and callbacks see it.

    Attributes
    ----------
    config, registry, source, index
        The resolved configuration, the component registry, the particle source and the
        particles this run trains on (dataset positions; a half set uses half of them).
    run_dir, device, rank, world
        Where outputs go; the device and the ``torch.distributed`` rank and world size.
    pipeline
        The model; a stage may swap its encoder (:meth:`use_encoder`).
    make_optimizer
        Optimizer factory: ``make_optimizer(pipeline)`` for the pipeline's current modules.
    callbacks
        :class:`cryoforge.engine.callbacks.Callback` objects, called in order (rank 0 only); see
        :meth:`emit`. Typed loosely: the callbacks module imports this one, not the reverse.
    state
        Checkpointed, mutable: ``stage`` (index of the current stage; ``len(stages)`` when done),
        ``step`` and ``elapsed_s`` of the whole run, ``encoder`` (name of the pipeline's encoder,
        ``None`` for the configured one) and ``stages`` (stage name → that stage's own progress,
        a dict of numbers owned by its runner: :meth:`stage_state`).
    poses
        A per-particle pose table (rows follow ``index``) a stage may leave for later ones;
        checkpointed.
    optimizer, optimizer_stage
        The optimizer of the stage named ``optimizer_stage`` (checkpointed with its name);
        ``resumed_optimizer`` holds the checkpoint's ``(stage name, optimizer state)`` until
        that stage takes it.
    result, clock
        The :class:`RunResult` being filled in, and the training clock.
    """

    config: RunConfig
    registry: Registry
    source: Source
    index: np.ndarray
    run_dir: Path
    device: torch.device
    pipeline: Pipeline
    make_optimizer: Callable[[Pipeline], torch.optim.Optimizer]
    callbacks: list[Any] = field(default_factory=list)
    rank: int = 0
    world: int = 1
    state: dict[str, Any] = field(default_factory=new_state)
    poses: Pose | None = None
    optimizer: torch.optim.Optimizer | None = None
    optimizer_stage: str | None = None
    resumed_optimizer: tuple[str, dict[str, Any]] | None = None
    result: RunResult = field(init=False)
    clock: Clock = field(default_factory=Clock)
    encoders: dict[str, Encoder] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.result = RunResult(self.run_dir)

    @property
    def collective(self) -> Collective:
        """The run's processes, as the stages split particles among them (:mod:`.collective`)."""
        return Collective(self.rank, self.world)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def emit(self, hook: str, *args: Any) -> None:
        """Call ``hook`` (a :class:`Callback` method name) on every callback, in order."""
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def table_pose(self, index: np.ndarray) -> Pose:
        """Rows of the pose table :attr:`poses` for the dataset positions ``index``."""
        if self.poses is None:
            raise ConfigError(
                "a stage reads the pose table, but no earlier stage left one (add a search stage)"
            )
        order = np.argsort(self.index, kind="stable")
        rows = order[np.searchsorted(self.index, index, sorter=order)]
        return self.poses.index(torch.as_tensor(rows))

    def table_rows(self) -> torch.Tensor | None:
        """Rows of :attr:`poses` that hold a found pose (``None``: all of them).

        A search of a subset (``subset``) leaves poses for its rows only, until the ``infer``
        stage fills the others from the encoder; checkpointed in ``state["table_rows"]``.
        """
        return self.state.get("table_rows")

    def table_index(self) -> np.ndarray:
        """Dataset positions whose table pose was found (all of :attr:`index` unless a subset was)."""
        rows = self.table_rows()
        return self.index if rows is None else self.index[rows.numpy()]

    def set_table_rows(self, rows: torch.Tensor | None) -> None:
        """Declare which rows of :attr:`poses` hold a found pose (``None``, or every row: all)."""
        if rows is None or len(rows) == len(self.index):
            self.state.pop("table_rows", None)
        else:
            self.state["table_rows"] = torch.as_tensor(rows, dtype=torch.long)

    def set_table_poses(self, rows: torch.Tensor | None, pose: Pose) -> None:
        """Write ``pose`` into the rows ``rows`` of :attr:`poses` (``None``: ``pose`` is the whole
        table). The table is copied, never changed in place: earlier exports may hold it."""
        if rows is None or self.poses is None:
            self.poses = pose
            return
        rotation, shift = self.poses.rotation.clone(), self.poses.shift_angstrom.clone()
        rotation[rows] = pose.rotation.to(rotation.dtype)
        shift[rows] = pose.shift_angstrom.to(shift.dtype)
        self.poses = Pose(rotation, shift)

    def steps_left(self) -> int | None:
        """Steps the run may still take under ``train.max_steps`` (all stages together), or None."""
        cap = self.config.train.max_steps
        return None if cap is None else max(0, cap - int(self.state["step"]))

    def cap_stage_steps(self, stage_step: int, total: int | None) -> int | None:
        """A stage's step budget ``total`` cut so the run stops at ``train.max_steps`` overall."""
        left = self.steps_left()
        if left is None:
            return total
        return stage_step + left if total is None else min(total, stage_step + left)

    def stage_state(self, stage: Stage) -> dict[str, Any]:
        """The checkpointed progress of ``stage`` (an empty dict when it has not started)."""
        return self.state["stages"].setdefault(stage.name, {})

    def take_optimizer(self, stage: Stage) -> torch.optim.Optimizer:
        """A new optimizer for ``stage``, with the checkpoint's state when resuming that stage."""
        self.optimizer, self.optimizer_stage = self.make_optimizer(self.pipeline), stage.name
        resumed, self.resumed_optimizer = self.resumed_optimizer, None
        if resumed is not None and resumed[0] == stage.name:
            self.optimizer.load_state_dict(resumed[1])
        return self.optimizer

    def use_encoder(self, name: str | None) -> None:
        """Put the encoder ``name`` into the pipeline (``None``: the configured one).

        Encoders other than the configured one are built on first use with their default
        options and a seed derived from ``train.seed`` and the name, and kept for later stages.
        """
        configured = self.config.encoder.name
        wanted = None if name in (None, configured) else name
        if self.config.train.gt_poses:
            if wanted is not None:
                raise ConfigError(f"a stage uses encoder {name!r} but train.gt_poses fits the known poses")
            return
        if wanted == self.state["encoder"]:
            return
        current = configured if self.state["encoder"] is None else self.state["encoder"]
        self.encoders[current] = self.pipeline.encoder
        key = configured if wanted is None else wanted
        if key not in self.encoders:
            self.encoders[key] = self.build_encoder(key)
        self.pipeline.encoder = self.encoders[key]
        self.state["encoder"] = wanted

    def spare_encoders(self) -> dict[str, Encoder]:
        """The encoders built for some stage that are not in the pipeline now."""
        return {n: e for n, e in self.encoders.items() if e is not self.pipeline.encoder}

    def build_encoder(self, name: str) -> Encoder:
        """Encoder ``name`` with default options, on the run's device (compiled when configured)."""
        ctx = BuildContext(self.source.image_size, self.source.pixel_size_angstrom)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.train.seed + zlib.crc32(name.encode()))
            enc = self.registry.build("encoder", name, {}, ctx).to(self.device)
        if self.config.train.compile:
            enc.compile()
        return enc
