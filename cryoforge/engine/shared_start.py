"""The shared low-resolution start of half sets (``train.half_start = "shared"``).

Two halves searched from random starts each settle in a map of their own. At low SNR both can
settle in the *same* wrong map (the same search on the same kind of data), and their FSC then
measures how reproducible that map is, not how right it is (``docs/validation.md``, *Half maps*).
RELION (3D initial model, then auto-refine from it with ``--ini_high``) and cryoSPARC (ab initio,
then homogeneous refinement from its map low-passed to 30 Å) start both halves from one map made
from all the particles, low-passed so that the halves share nothing finer. This module does the
same:

1. a global search (no local refinement) on all the particles, or a seeded random
   :data:`~cryoforge.schedules.abinit.SUBSET` of them, in ``RUN/start/``;
2. their backprojection at the found poses (with the CTF), ``RUN/start/start_map.mrc``;
3. each half's search starts from that map low-passed to the search's
   ``initial_lowpass_angstrom`` (30 Å by default; :mod:`cryoforge.engine.initial_map`).

The half-map FSC shells below that resolution are shared by construction; the verdict on
consistent structure reads only the shells beyond it (:func:`shared_shells`).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryoforge.config import RunConfig
from cryoforge.engine.context import CHECKPOINT, RunResult
from cryoforge.engine.initial_map import configured_initial_map, lowpass_weights
from cryoforge.engine.reconstruct import backproject_particles
from cryoforge.errors import CryoforgeError
from cryoforge.io.mrc import write_mrc
from cryoforge.io.outputs import HALF_DIRS, START_DIR
from cryoforge.roles import Source
from cryoforge.schedules.abinit import SUBSET

log = logging.getLogger("cryoforge")

START_MAP = "start_map.mrc"


def start_search_options(config: RunConfig) -> dict[str, Any] | None:
    """The search options of the shared start, or ``None`` when there is nothing to start.

    Nothing to start: known poses (``train.gt_poses``), a schedule without search options (the
    cryoAI schedule), or a search that already starts from a user's ``initial_map``.
    """
    if config.train.gt_poses or config.schedule.name != "abinit" or configured_initial_map(config):
        return None
    search = dict(config.schedule.options.get("search") or {})
    search.pop("subset", None)  # the start's own particles are chosen below
    search["refine_steps_deg"] = []  # a 30 Å start needs no local refinement
    return search


def start_rows(n: int, seed: int, subset: int | None = SUBSET) -> np.ndarray:
    """Sorted rows of ``range(n)`` the start searches: all, or a seeded random ``subset`` of them
    (the schedule's ``subset``: ``None`` searches all)."""
    if subset is None or n <= subset:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed * 7_919 + 5).choice(n, subset, replace=False))


def start_config(config: RunConfig, search: dict[str, Any], start_dir: Path) -> RunConfig:
    """The start's own run: the search stage alone, no pictures, no half sets."""
    stage = {"name": "search", "kind": "search", "options": search}
    schedule = config.schedule.model_copy(update={"name": "staged", "options": {"stages": [stage]}})
    train = config.train.model_copy(update={"half_sets": False, "pictures": False})
    update = {"schedule": schedule, "train": train, "output_dir": str(start_dir), "ground_truth_map": None}
    return config.model_copy(update=update)


def with_initial_map(config: RunConfig, path: Path) -> RunConfig:
    """``config`` whose search starts from ``path`` (``schedule.search.initial_map``)."""
    options = dict(config.schedule.options)
    options["search"] = {**dict(options.get("search") or {}), "initial_map": str(path)}
    schedule = config.schedule.model_copy(update={"options": options})
    return config.model_copy(update={"schedule": schedule})


def shared_start(
    config: RunConfig,
    source: Source,
    run_dir: Path,
    resume: bool,
    train: Callable[[RunConfig, np.ndarray, Path, bool], RunResult],
    rank: int,
) -> RunConfig:
    """Run (or reuse) the shared start; returns ``config`` with the halves' ``initial_map`` set.

    ``train(config, index, run_dir, resume)`` trains one run (``train_one``). The start's map is
    written once; a resumed run that finds it reuses it, one killed inside the start's search
    continues that search.
    """
    search = start_search_options(config)
    if search is None:
        return config
    start_dir = run_dir / START_DIR
    path = start_dir / START_MAP
    halves_begun = any((run_dir / h / CHECKPOINT).is_file() for h in HALF_DIRS)
    if resume and halves_begun and not path.is_file() and not (start_dir / CHECKPOINT).is_file():
        log.info("half sets: the halves began without a shared start (an earlier version): none now")
        return config
    if not resume and rank == 0 and start_dir.is_dir():  # a new run never reuses an old start
        shutil.rmtree(start_dir)
    _barrier()
    if not path.is_file():
        rows = start_rows(len(source), config.train.seed, config.schedule.options.get("subset", SUBSET))
        log.info("half sets: a shared start from %d particles (search only), in %s", len(rows), start_dir)
        cfg = start_config(config, search, start_dir)
        result = train(cfg, rows, start_dir, resume and (start_dir / CHECKPOINT).is_file())
        if rank == 0:
            if result.poses is None or len(result.poses.rotation) != len(rows):
                raise CryoforgeError(f"{start_dir}: the shared start left no poses (resume or --overwrite)")
            volume = backproject_particles(source, rows, result.poses)
            write_mrc(path, volume.float().numpy(), float(source.pixel_size_angstrom))
            # the start fits no network: its exported map.mrc is an untrained one, not to be opened
            (start_dir / "map.mrc").unlink(missing_ok=True)
    _barrier()
    halves = with_initial_map(config, path)
    log.info("half sets: both halves start from %s low-passed to %g Å", path, shared_lowpass_angstrom(halves))
    return halves


def shared_lowpass_angstrom(config: RunConfig) -> float | None:
    """The resolution (Å) to which the halves of ``config`` (the halves' own, after
    :func:`shared_start`) share a common ``initial_map``; ``None`` when they start independently."""
    if config.train.gt_poses or not configured_initial_map(config):
        return None
    from cryoforge.engine.search import configured_search_options  # the search's own default low-pass

    return configured_search_options(config).initial_lowpass_angstrom


def shared_shells(lowpass_angstrom: float | None, box_angstrom: float, box_px: int) -> int:
    """The last Fourier shell of a ``box_px`` box of ``box_angstrom`` that a start low-passed to
    ``lowpass_angstrom`` reaches: the last one with weight in
    :func:`~cryoforge.engine.initial_map.lowpass_weights` (``ceil(box / lowpass)`` below Nyquist);
    0 for none."""
    if lowpass_angstrom is None:
        return 0
    weights = lowpass_weights(box_px, box_angstrom, lowpass_angstrom)
    return int(torch.nonzero(weights > 0).max())


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
