"""Half sets trained in lockstep: both half maps exist at every export, and the half-map FSC is
measured there (``history.jsonl`` of the run folder, ``progress.png``, ``report.html``).

The half-map FSC is the gold standard of RELION and cryoSPARC (:func:`halfmap_fsc`): each half is
backprojected from its own particles at its own current poses, the two backprojections are
aligned by a blind map search (both hands) and compared. The fitted (network) maps are compared
too, labelled as such: two networks share their prior (an untrained FourierNet reads as Nyquist),
so their FSC is never the half-map FSC.

The two halves take turns: each trains until its training clock reaches the next multiple of
``train.export_every_s``, exports, checkpoints and pauses (:class:`PauseCallback`); the other half
then catches up to the same training time and the two maps are compared. A paused half continues
from its checkpoint exactly as ``--resume`` does, so the halves end as they would have trained one
after the other. With more than one process (``torchrun``) the halves train one after the other.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryoforge.config import RunConfig
from cryoforge.engine.callbacks import Callback, StepInfo
from cryoforge.engine.checkpoint import save_checkpoint
from cryoforge.engine.context import RunContext, RunResult
from cryoforge.engine.export import export
from cryoforge.engine.reconstruct import backproject_particles
from cryoforge.engine.shared_start import shared_lowpass_angstrom, shared_shells
from cryoforge.io.mrc import read_map, write_mrc
from cryoforge.metrics.alignment import align_map
from cryoforge.metrics.fsc import LOWEST_SHELLS, FSCReport, consistent_structure, fsc_report
from cryoforge.metrics.fsc_weighting import fsc_weighted_average, lowpass_shell
from cryoforge.metrics.masked_fsc import (
    NO_MASK,
    MaskedFSC,
    corrected_masked_fsc,
    correction_text,
    resolve_mask,
)
from cryoforge.metrics.plot import plot_fsc
from cryoforge.ops.symmetry import point_group_matrices, symmetrize_volume
from cryoforge.roles import Source
from cryoforge.types import Pose

log = logging.getLogger("cryoforge")


class Paused(Exception):
    """A training segment ended at its pause time (not an error: the run continues later)."""


class PauseCallback(Callback):
    """After the first step at or past ``at_s`` s of training: export, checkpoint, raise :class:`Paused`.

    Put it last, so that every other callback has seen the step.
    """

    def __init__(self, at_s: float) -> None:
        self.at_s = at_s

    def on_step(self, ctx: RunContext, info: StepInfo) -> None:
        if ctx.state["elapsed_s"] >= self.at_s:
            with ctx.clock.paused():
                export(ctx)
                save_checkpoint(ctx)
            raise Paused


def half_config(config: RunConfig, i: int) -> RunConfig:
    """Half ``i``'s config: independent halves have different seeds (weights, batch order); with
    ``train.half_encoders = "first"`` half 2 (``i = 1``) of the default schedule trains no encoder
    (``amortize_steps`` 0, and so no search subset: every particle of it is searched)."""
    train = config.train.model_copy(update={"seed": config.train.seed + 1000 * (i + 1)})
    out = config.model_copy(update={"train": train})
    if i == 1 and config.train.half_encoders == "first" and config.schedule.name == "abinit":
        options = {**config.schedule.options, "amortize_steps": 0}
        if isinstance(options.get("search"), dict):  # a subset needs the encoder to pose the rest
            options["search"] = {k: v for k, v in options["search"].items() if k != "subset"}
        out = out.model_copy(update={"schedule": config.schedule.model_copy(update={"options": options})})
    return out


def _elapsed(half_dir: Path) -> float:
    from cryoforge.engine.checkpoint import load_checkpoint

    ck = half_dir / "checkpoint.pt"
    if not ck.is_file():
        return 0.0
    return float(load_checkpoint(ck)["state"].get("elapsed_s", 0.0))


def append_history(run_dir: Path, entry: dict[str, float]) -> None:
    """One line of ``run_dir/history.jsonl`` (non-finite numbers as ``null``)."""
    clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in entry.items()}
    with open(run_dir / "history.jsonl", "a") as fh:
        fh.write(json.dumps(clean) + "\n")


NO_STRUCTURE = (
    "the data show no consistent structure: the half-map FSC (masked and unmasked) does not exceed "
    f"the half-bit curve at two neighbouring shells beyond shell {LOWEST_SHELLS} and beyond those of a "
    "shared start (noise, wrong particles or a wrong CTF?)"
)

HALFMAP_METHOD = (
    "gold standard: each half backprojected from its own particles at its own poses, "
    "half 2 aligned onto half 1 by a blind map search (both hands)"
)
HALFMAP_METHOD_GT = "gold standard: each half backprojected from its own particles at the known poses"
FITTED_METHOD = "the two fitted (network) maps, aligned as the backprojections; not the half-map FSC"


@dataclass
class HalfMapFSC:
    """The half-map FSC of a half-set run and what it was computed from.

    ``report`` is the gold-standard FSC (backprojections; masked and corrected when a mask was
    used, ``masked`` then holds its parts), ``unmasked`` the same without a mask, ``fitted`` that of
    the two fitted maps, unmasked (``None`` when no fitted maps were given), ``maps`` the two
    backprojections (half 2 aligned onto half 1), ``fitted_average`` the average of the fitted maps
    (half 2 aligned), or ``None``; ``mask`` the mask and ``mask_text`` what it is; ``average`` the
    run's final map, the backprojections' average weighted by the quoted FSC
    (:func:`~cryoforge.metrics.fsc_weighting.fsc_weighted_average`).
    """

    report: FSCReport
    fitted: FSCReport | None
    maps: tuple[torch.Tensor, torch.Tensor]
    fitted_average: torch.Tensor | None
    mirrored: bool
    method: str
    consistent: bool
    unmasked: FSCReport | None = None
    masked: MaskedFSC | None = None
    mask: torch.Tensor | None = None
    mask_text: str = NO_MASK
    shared_lowpass_angstrom: float | None = None  # the halves' common start, low-passed to this
    average: torch.Tensor | None = None  # the final map: the backprojections' FSC-weighted average

    def metrics(self) -> dict[str, Any]:
        """``halfmap_*`` (the gold standard, with the half-bit crossing and the verdict) and
        ``fitted_maps_*`` (labelled as the fitted maps'), for ``metrics.json`` and the report."""
        out: dict[str, Any] = {"halfmap_" + k: v for k, v in self.report.summary((0.5, 0.143)).items()}
        hb = self.report.half_bit_crossing()
        out["halfmap_halfbit_angstrom"] = hb.resolution_angstrom(self.report.pixel_size_angstrom)
        out["halfmap_halfbit_text"] = hb.label(self.report.pixel_size_angstrom, self.report.box_size)
        out["halfmap_consistent_structure"] = self.consistent
        if not self.consistent:  # a crossing of noise is no resolution: say so beside the number
            for t in (0.5, 0.143):
                out[f"halfmap_resolution_{t}_text"] += " (no consistent structure)"
        out["halfmap_method"] = self.method
        out["halfmap_mask"] = self.mask_text
        if self.masked is not None:
            out["halfmap_mask"] += correction_text(self.masked)
            out["halfmap_mask_fraction"] = self.masked.mask_fraction
        if self.unmasked is not None and self.masked is not None:
            out.update({"halfmap_unmasked_" + k: v for k, v in self.unmasked.summary((0.5, 0.143)).items()})
            if not self.consistent:
                for t in (0.5, 0.143):
                    out[f"halfmap_unmasked_resolution_{t}_text"] += " (no consistent structure)"
        out["halves_mirrored"] = self.mirrored
        out["final_map_text"] = final_map_text(self.report)
        if self.shared_lowpass_angstrom is not None:
            box_a = self.report.box_size * self.report.pixel_size_angstrom
            shells = shared_shells(self.shared_lowpass_angstrom, box_a, self.report.box_size)
            out["halfmap_shared_start_angstrom"] = self.shared_lowpass_angstrom
            out["halfmap_shared_start_text"] = (
                f"both halves started from one map of all the particles low-passed to "
                f"{self.shared_lowpass_angstrom:g} Å (shells 1-{shells} shared; "
                "the verdict reads beyond them)"
            )
        if self.fitted is not None:
            out.update({"fitted_maps_" + k: v for k, v in self.fitted.summary((0.5, 0.143)).items()})
            out["fitted_maps_method"] = FITTED_METHOD
        return out

    def history(self) -> dict[str, float]:
        """The numbers of a ``history.jsonl`` line."""
        out = {HALF_KEY: float(self.report.resolution_angstrom(0.143))}
        if self.fitted is not None:
            out[FITTED_KEY] = float(self.fitted.resolution_angstrom(0.143))
        out["halfmap_consistent_structure"] = float(self.consistent)
        return out

    def plot(self, path: Path) -> None:
        """``fsc_halves.png``: both curves, 0.5, 0.143 and the half-bit curve; the verdict."""
        if self.masked is not None:
            corrected = self.masked.randomize_from_shell is not None
            label = "masked, corrected" if corrected else "masked (no correction needed)"
            curves = {f"half maps, {label} (gold standard)": self.report}
            if self.unmasked is not None:
                curves["half maps, unmasked"] = self.unmasked
        else:
            curves = {"half maps (backprojections, gold standard)": self.report}
        if self.fitted is not None:
            curves["fitted maps (network, unmasked)"] = self.fitted
        plot_fsc(curves, path, half_bit=True, note=None if self.consistent else "no consistent structure")


def final_map_text(report: FSCReport) -> str:
    """What ``map.mrc`` of a half-set run is, with its low-pass (:func:`final_map`)."""
    cutoff = lowpass_shell(report.values)
    what = "map.mrc: the half maps' average, each shell weighted by sqrt(2 FSC / (1 + FSC)) of the quoted FSC"
    if math.isinf(cutoff):
        return f"{what}, not low-passed (the FSC stays above 0.143 to Nyquist)"
    if cutoff <= 0:
        return f"{what}: only its mean is kept (the FSC is below 0.143 from shell 1)"
    angstrom = report.box_size * report.pixel_size_angstrom / cutoff
    return f"{what}, low-passed at {angstrom:.1f} Å (its 0.143 crossing)"


HALF_KEY = "halfmap_resolution_0.143_angstrom"
FITTED_KEY = "fitted_maps_resolution_0.143_angstrom"


def half_poses(source: Source, index: np.ndarray, result: RunResult | None) -> Pose | None:
    """The poses a half's backprojection uses: its last export's (search table or encoder), else
    the source's known poses; ``None`` when there are neither."""
    if result is not None and result.poses is not None and len(result.poses.rotation) == len(index):
        return result.poses
    if source.poses is not None:
        return source.poses.index(torch.as_tensor(index))
    return None


def halfmap_fsc(
    source: Source,
    halves: list[np.ndarray],
    poses: list[Pose],
    pixel_size_angstrom: float,
    same_frame: bool,
    fitted: tuple[torch.Tensor, torch.Tensor] | None = None,
    n_search: int = 2000,
    mask: str = "auto",
    shared_lowpass_angstrom: float | None = None,
    symmetry: str = "C1",
) -> HalfMapFSC:
    """The gold-standard half-map FSC: each half backprojected from its own particles at its own
    poses (:func:`~cryoforge.engine.reconstruct.backproject_particles`, with the CTF when the
    source has one), half 2 aligned onto half 1 by the blind map search of
    :func:`~cryoforge.metrics.alignment.align_map` (both hands; identity rotation when
    ``same_frame``: both at the known poses), then their FSC. Never a network's map: the fitted
    maps ``fitted`` (half 1, half 2), if given, get their own FSC after the same rotation and hand.

    ``mask`` (``train.halfmap_mask``: ``"auto"``, ``"none"`` or an ``.mrc`` path, see
    :func:`resolve_mask`) makes the quoted FSC the masked one, corrected by phase randomisation
    (:func:`~cryoforge.metrics.masked_fsc.corrected_masked_fsc`); the unmasked FSC is kept beside it.
    ``shared_lowpass_angstrom``: the halves started from one map low-passed to this resolution
    (:mod:`cryoforge.engine.shared_start`); the verdict on consistent structure reads beyond the
    shells it reaches. With a point group ``symmetry`` other than C1 (the search's, imposed in the
    frame of half 1's map) both aligned backprojections are averaged over it about the box centre
    before the mask and the FSC, as RELION's half maps of a symmetric refinement are. The final map
    (``average``) is the half maps' average weighted by the quoted FSC (masked and corrected, as
    RELION's post-processing weights).
    """
    b1, b2 = (backproject_particles(source, h, p) for h, p in zip(halves, poses, strict=True))
    if same_frame:
        al = align_map(b2, b1, torch.eye(3), False)
    else:
        al = align_map(b2, b1, n_search=n_search)
    symmetric = symmetry.upper() != "C1"
    h1, h2 = b1.float(), al.aligned.float()
    if symmetric:  # RELION's half maps of a symmetric refinement are symmetric too
        h1, h2 = (symmetrize_volume(h, symmetry).float() for h in (h1, h2))
    mask_t, mask_text = resolve_mask(mask, (h1 + h2) / 2, pixel_size_angstrom)
    masked = None
    if mask_t is None:
        rep = unmasked = fsc_report(h1, h2, pixel_size_angstrom)
    else:  # the masked FSC's parts include the unmasked curve
        masked = corrected_masked_fsc(h1.double(), h2.double(), mask_t, pixel_size_angstrom)
        rep, unmasked = masked.corrected, masked.unmasked
    if symmetric:  # each independent voxel is repeated once per group element
        order = len(point_group_matrices(symmetry))
        rep, unmasked = (replace(r, voxel_fraction=r.voxel_fraction / order) for r in (rep, unmasked))
    fit_rep, avg = None, None
    if fitted is not None:
        f1, f2 = (m.float() for m in fitted)
        fal = align_map(f2, f1, al.rotation, al.mirrored)
        fit_rep = fsc_report(f1, fal.aligned, pixel_size_angstrom)
        avg = (f1 + fal.aligned) / 2
    method = HALFMAP_METHOD_GT if same_frame else HALFMAP_METHOD
    if symmetric:
        method += f"; both averaged over {symmetry.upper()} about the box centre (the search imposed it)"
    box_a = float(b1.shape[-1]) * pixel_size_angstrom
    lowest = max(LOWEST_SHELLS, shared_shells(shared_lowpass_angstrom, box_a, int(b1.shape[-1])))
    return HalfMapFSC(
        rep,
        fit_rep,
        (h1, h2),
        avg,
        al.mirrored,
        method,
        # both curves must show it: the correction's random phases add noise of their own
        consistent_structure(rep, lowest) and consistent_structure(unmasked, lowest),
        unmasked,
        masked,
        mask_t,
        mask_text,
        shared_lowpass_angstrom,
        final_map(h1, h2, rep.values, symmetry),  # RELION's post-processing: the quoted FSC
    )


def final_map(
    half1: torch.Tensor, half2: torch.Tensor, fsc_values: np.ndarray, symmetry: str
) -> torch.Tensor:
    """The run's ``map.mrc`` from the two aligned half maps: their FSC-weighted average
    (:func:`~cryoforge.metrics.fsc_weighting.fsc_weighted_average`), averaged over ``symmetry``
    about the box centre unless C1 (again: the filter is periodic, and the box edge, where the
    group's images of a voxel leave the box, is not symmetric)."""
    average = fsc_weighted_average(half1, half2, fsc_values)
    return average if symmetry.upper() == "C1" else symmetrize_volume(average, symmetry).float()


def run_halfmap_fsc(
    config: RunConfig,
    source: Source,
    halves: list[np.ndarray],
    poses: list[Pose],
    fitted: tuple[torch.Tensor, torch.Tensor],
    n_search: int = 2000,
) -> HalfMapFSC:
    """:func:`halfmap_fsc` with the run's settings: its frame (``train.gt_poses``), mask and the
    halves' shared start (:func:`~cryoforge.engine.shared_start.shared_lowpass_angstrom`)."""
    return halfmap_fsc(
        source,
        halves,
        poses,
        float(source.pixel_size_angstrom),
        config.train.gt_poses,
        fitted,
        n_search=n_search,
        mask=config.train.halfmap_mask,
        shared_lowpass_angstrom=shared_lowpass_angstrom(config),
        symmetry=search_symmetry(config),
    )


def search_symmetry(config: RunConfig) -> str:
    """The point group the default schedule's search imposes (``schedule.search.symmetry``; C1
    for none, for another schedule, and with ``train.gt_poses``, whose frame is the known poses')."""
    from cryoforge.engine.search import configured_search_options

    search = configured_search_options(config)
    # with known poses the frame is theirs: its axes need not be the box's
    return "C1" if config.train.gt_poses or search is None else search.symmetry


@contextmanager
def _run_log(run_dir: Path) -> Iterator[None]:
    """Also log to the run folder's ``run.log`` (each half logs to its own folder's)."""
    fh = logging.FileHandler(run_dir / "run.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(fh)
    try:
        yield
    finally:
        log.removeHandler(fh)
        fh.close()


def report_halfmap_fsc(
    hm: HalfMapFSC, run_dir: Path, pixel_size_angstrom: float, when: str
) -> dict[str, Any]:
    """Log the half-map FSC (and the verdict in one line when there is no consistent structure),
    write ``halfmap1.mrc``/``halfmap2.mrc`` (half 2 aligned onto half 1) and ``fsc_halves.png``;
    returns the metrics."""
    metrics = hm.metrics()
    fitted = metrics.get("fitted_maps_resolution_0.143_text", "n/a")
    with _run_log(run_dir):
        log.info(
            "half-map FSC %s: %s (half-bit: %s; the fitted maps' FSC: %s)",
            when,
            metrics["halfmap_resolution_0.143_text"],
            metrics["halfmap_halfbit_text"],
            fitted,
        )
        if not hm.consistent:
            log.warning(NO_STRUCTURE)
    for i, m in enumerate(hm.maps):
        write_mrc(run_dir / f"halfmap{i + 1}.mrc", m.numpy(), pixel_size_angstrom)
    if hm.mask is not None:
        write_mrc(run_dir / "halfmap_mask.mrc", hm.mask.numpy(), pixel_size_angstrom)
    hm.plot(run_dir / "fsc_halves.png")
    return metrics


FINAL_MAP = "map.mrc"
FITTED_MAP = "map_fitted.mrc"


def write_final_maps(hm: HalfMapFSC, run_dir: Path, pixel_size_angstrom: float) -> np.ndarray:
    """Write the run's ``map.mrc`` (``hm.average``: the backprojections' FSC-weighted average) and
    ``map_fitted.mrc`` (the fitted maps' average, half 2 aligned) when there are fitted maps;
    returns the final map."""
    final = hm.average
    assert final is not None, "halfmap_fsc always makes the final map"
    write_mrc(run_dir / FINAL_MAP, final.numpy(), pixel_size_angstrom)
    if hm.fitted_average is not None:
        write_mrc(run_dir / FITTED_MAP, hm.fitted_average.numpy(), pixel_size_angstrom)
    return final.numpy()


def write_fitted_only(run_dir: Path, fitted_average: np.ndarray, pixel_size_angstrom: float) -> None:
    """No poses, no half maps: ``map.mrc`` is the fitted maps' average (logged), and an older
    ``map_fitted.mrc`` is removed so that no stale copy stays beside it."""
    write_mrc(run_dir / FINAL_MAP, fitted_average, pixel_size_angstrom)
    (run_dir / FITTED_MAP).unlink(missing_ok=True)
    log.info("map.mrc is the fitted maps' average: without poses there are no half maps to weight")


def train_halves(
    config: RunConfig,
    halves: list[np.ndarray],
    run_dir: Path,
    resume: bool,
    train: Callable[..., RunResult],
    rank: int,
    world: int,
    source: Source | None = None,
) -> list[RunResult]:
    """Train both halves, in lockstep on one process; returns their results (half 1, half 2).

    ``train(config, index, half_dir, resume, pause_at_s)`` trains one half (``train_one``); it
    returns a result with ``paused`` set when it stopped at ``pause_at_s``. With ``source`` the
    half-map FSC is measured at every pause (:func:`interim_halves`).
    """
    dirs = [run_dir / f"half{i + 1}" for i in range(2)]
    every = config.train.export_every_s
    if world > 1:  # the pause is decided on rank 0 alone: no lockstep across processes
        return [train(half_config(config, i), halves[i], dirs[i], resume, None) for i in range(2)]
    start = min(_elapsed(d) for d in dirs) if resume else 0.0
    if not resume and rank == 0:  # a new run (or --overwrite): the half-map history starts afresh
        (run_dir / "history.jsonl").unlink(missing_ok=True)
    mark = every * (math.floor(start / every) + 1)
    results: list[RunResult | None] = [None, None]
    first = [True, True]

    def running(i: int) -> bool:
        return results[i] is None or results[i].paused

    while running(0) or running(1):
        for i in range(2):
            if not running(i):
                continue
            pause = mark if running(1 - i) else None  # alone, a half need not wait for the other
            results[i] = train(half_config(config, i), halves[i], dirs[i], resume or not first[i], pause)
            first[i] = False
        if rank == 0 and all(r is not None and r.paused for r in results):
            done = [r for r in results if r is not None]
            interim_halves(config, dirs, run_dir, mark, done, source, halves)
        mark += every
    return [r for r in results if r is not None]


def interim_halves(
    config: RunConfig,
    dirs: list[Path],
    run_dir: Path,
    elapsed_s: float,
    results: list[RunResult],
    source: Source | None = None,
    halves: list[np.ndarray] | None = None,
) -> None:
    """Both halves paused at ``elapsed_s``: the half-map FSC there (:func:`halfmap_fsc`, from each
    half's poses at this export), the final map and the fitted maps' average, the pictures."""
    from cryoforge.engine.pictures import write_halves_pictures

    (m1, px), (m2, _) = read_map(dirs[0] / "map.mrc"), read_map(dirs[1] / "map.mrc")
    m1t, m2t = torch.from_numpy(m1), torch.from_numpy(m2)
    poses = (
        []
        if source is None or halves is None
        else [half_poses(source, h, r) for h, r in zip(halves, results, strict=True)]
    )
    warnings: list[str] = []
    if poses and all(p is not None for p in poses):
        hm = run_halfmap_fsc(config, source, halves, poses, (m1t, m2t), n_search=500)
        metrics = report_halfmap_fsc(hm, run_dir, px, f"at {elapsed_s:.0f} s of training")
        append_history(run_dir, {**hm.history(), "elapsed_s": elapsed_s})
        avg = write_final_maps(hm, run_dir, px)
        if not hm.consistent:
            warnings.append(NO_STRUCTURE)
    else:  # no poses to backproject with: no half-map FSC (never the fitted maps' in its place)
        metrics = {}
        avg = ((m1t + m2t) / 2).numpy()
        log.info("no half-map FSC at %.0f s of training: no poses to backproject with", elapsed_s)
        write_fitted_only(run_dir, avg, px)
    if config.train.pictures:
        write_halves_pictures(run_dir, metrics, avg, px, results, final=False, warnings=warnings)
