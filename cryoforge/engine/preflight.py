"""Checks before a run writes anything, and claiming its folder.

:func:`preflight` builds what training will build (device, model) so that a bad configuration
fails before ``config.json`` exists; :func:`check_resume` compares a resume's options and data
with the run's checkpoint; :func:`claim_run_dir` then locks the folder, marks it as a run and
clears what ``--overwrite`` replaces. Nothing before :func:`claim_run_dir` writes a byte.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from cryoforge.config import RunConfig, load_config_file, resolve
from cryoforge.engine.build import build_pipeline, pick_device
from cryoforge.engine.checkpoint import load_checkpoint
from cryoforge.engine.context import CHECKPOINT
from cryoforge.engine.portable import with_stored_defaults
from cryoforge.errors import ConfigError, InputFileError
from cryoforge.io.outputs import (
    HALF_DIRS,
    START_DIR,
    RunLock,
    check_run_dir,
    clear_run_outputs,
    read_run_marker,
    remove_stale_temp_files,
    write_run_marker,
)
from cryoforge.pipeline import Pipeline
from cryoforge.registry import Registry
from cryoforge.roles import Source
from cryoforge.types import BuildContext

log = logging.getLogger("cryoforge")

RESUMABLE = frozenset(
    {
        "output_dir",
        "ground_truth_map",
        "source.options.datadir",
        "train.epochs",
        "train.max_steps",
        "train.max_time_s",
        "train.device",
        "train.amp",
        "train.compile",
        "train.checkpoint_every_steps",
        "train.checkpoint_every_s",
        "train.export_every_s",
        "train.log_every",
        "train.tensorboard",
        "train.progress",
    }
)
"""Settings a resumed run may change: budgets, device, logging; nothing that shapes the model or
what it has learnt from. Stage budgets (schedule options named ``*_steps``) may change too."""


def resumable(key: str) -> bool:
    """Whether flattened setting ``key`` may differ on ``--resume`` (:data:`RESUMABLE`, or a stage
    budget such as ``schedule.options.amortize_steps``: more steps continue the same run)."""
    return key in RESUMABLE or (key.startswith("schedule.options.") and key.endswith("_steps"))


def data_signature(source: Source) -> dict[str, Any]:
    """What a run's checkpoint depends on in its data: particle count, box and pixel size."""
    return {
        "n_particles": len(source),
        "image_size": int(source.image_size),
        "pixel_size_angstrom": float(source.pixel_size_angstrom),
    }


def check_halfmap_mask(config: RunConfig, source: Source) -> None:
    """``train.halfmap_mask`` is ``auto``, ``none`` or a readable ``.mrc`` of the images' box
    (:func:`~cryoforge.metrics.masked_fsc.read_mask_file`, checked before training, so that a typo
    does not cost a run)."""
    spec = config.train.halfmap_mask
    if spec in ("auto", "none"):
        return
    from cryoforge.metrics.masked_fsc import read_mask_file

    if not Path(spec).is_file():
        raise ConfigError(f"train.halfmap_mask: {spec!r} is neither 'auto', 'none' nor an existing .mrc file")
    if not config.train.gt_poses:
        raise ConfigError(
            f"train.halfmap_mask: a mask file ({spec}) fits only the frame of known poses "
            "(train.gt_poses); an ab initio half 1 comes out in a frame of its own: use 'auto', or "
            "'cryoforge evaluate RUN/halfmap1.mrc --half2 RUN/halfmap2.mrc --mask FILE' after the run"
        )
    read_mask_file(spec, int(source.image_size), source.pixel_size_angstrom, "train.halfmap_mask")


def check_initial_map(config: RunConfig, source: Source) -> None:
    """``schedule.search.initial_map``, when given, is a readable map at the particles' pixel size
    (:func:`~cryoforge.engine.initial_map.read_initial_map`), checked before anything is written."""
    from cryoforge.engine.initial_map import configured_initial_map, read_initial_map

    path = configured_initial_map(config)
    if not path:
        return
    if not Path(path).is_file():
        raise InputFileError(path, "no such map file", "schedule.search.initial_map")
    read_initial_map(path, int(source.image_size), float(source.pixel_size_angstrom))


def preflight(config: RunConfig, registry: Registry, source: Source, bctx: BuildContext) -> Pipeline:
    """Everything training builds before its first step, built once on the CPU to fail early.

    Returns the pipeline (untrained) for :func:`check_resume`.

    Raises
    ------
    ConfigError
        An unusable device, known poses asked of a source without them, or a component that
        cannot be built for these images.
    """
    device = pick_device(config.train.device)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"train.device: {config.train.device!r} requested but this machine has "
            f"{torch.cuda.device_count()} CUDA device(s)"
        )
    if config.train.gt_poses and source.poses is None:
        raise ConfigError("train.gt_poses: the source has no poses")
    check_halfmap_mask(config, source)
    check_initial_map(config, source)
    with torch.random.fork_rng(devices=[]):
        return build_pipeline(config, registry, bctx)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def _same_path(a: Any, b: Any) -> bool:
    if a == b:
        return True
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    pa, pb = Path(a), Path(b)
    try:
        return pa.exists() and pb.exists() and pa.samefile(pb)
    except OSError:
        return False


def _shown(key: str) -> str:
    """``volume.options.hidden_dim`` as the user types it: ``volume.hidden_dim``."""
    return key.replace(".options.", ".", 1)


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints: ``checkpoint.pt``, or one per half, and the half sets' shared start's."""
    folders = (run_dir, *(run_dir / h for h in HALF_DIRS), run_dir / START_DIR)
    return [p for p in (f / CHECKPOINT for f in folders) if p.is_file()]


def check_resume(
    config: RunConfig, registry: Registry, run_dir: Path, source: Source, pipeline: Pipeline
) -> None:
    """Refuse a resume whose options or data differ from the run's; reads only.

    The run's settings come from its checkpoint (what the weights were trained with), else its
    ``config.json`` (half sets: each half's checkpoint holds that half's seed). Only
    :data:`RESUMABLE` settings may change; the model built from the new options must have the
    checkpoint's parameter shapes; the particles must be the run's (same file, count and box).

    Raises
    ------
    InputFileError
        Naming the run's file and the setting, with both values.
    """
    cks = checkpoints(run_dir)
    if not cks:
        raise InputFileError(
            run_dir / CHECKPOINT,
            "no checkpoint: nothing to resume, and the run's outputs are kept; to start it over, "
            f"run it again with --config {run_dir / 'config.json'} -d {run_dir} --overwrite",
            "--resume",
        )
    ck = load_checkpoint(cks[0])
    stored_from, stored = run_dir / "config.json", None
    if ck is not None and cks[0].parent == run_dir and isinstance(ck.get("config"), str):
        with contextlib.suppress(ValueError):  # (a half's checkpoint holds the half's own seed)
            stored_from, stored = cks[0], RunConfig.model_validate_json(ck["config"])
    if stored is None:
        stored_from, stored = run_dir / "config.json", load_config_file(run_dir / "config.json")
    stored = resolve(with_stored_defaults(stored, registry), registry)
    old = _flatten(stored.model_dump(mode="json", exclude={"plugins"}))
    new = _flatten(config.model_dump(mode="json", exclude={"plugins"}))
    changed = [
        k
        for k in sorted(set(old) | set(new))
        if not resumable(k) and not k.startswith(SCHEDULE_OPTIONS) and not _same_path(old.get(k), new.get(k))
    ]
    if not changed:  # the schedule's options: only the stages that have not started may change
        diffs = _changed_stages(stored, config, registry, [ck, *(load_checkpoint(p) for p in cks[1:])])
        for k, (was, now) in diffs.items():
            old[k], new[k] = was, now
        changed = list(diffs)
    if changed:
        what = "; ".join(f"{_shown(k)} {old.get(k)!r} in the run, {new.get(k)!r} now" for k in changed)
        hint = (
            "resume trains on the run's particles only"
            if any(k.startswith("source.") for k in changed)
            else "a stage that has run keeps its options; start a new run with -d, or replace this "
            "one with --overwrite"
            if changed[0].startswith("stage ")
            else "start a new run with -d, or replace this one with --overwrite"
        )
        raise InputFileError(stored_from, f"--resume cannot change {what} ({hint})", _shown(changed[0]))
    want = data_signature(source)
    had = (read_run_marker(run_dir) or {}).get("data") or {}
    for key, value in want.items():
        if key in had and had[key] != value:
            raise InputFileError(
                source.path if hasattr(source, "path") else run_dir,
                f"the run trained on {key} {had[key]}, the particles now give {value}; "
                "resume needs the run's data",
                "--resume",
            )
    for path in cks:
        _check_shapes(pipeline, config.encoder.name, ck if path == cks[0] else load_checkpoint(path), path)


SCHEDULE_OPTIONS = "schedule.options."

_BUDGETS = ("max_steps", "epochs")


def _changed_stages(
    stored: RunConfig, config: RunConfig, registry: Registry, cks: list[dict[str, Any]]
) -> dict[str, tuple[Any, Any]]:
    """Settings of the stages a checkpoint has started that ``config`` changes: ``{key: (old, new)}``.

    A stage has started when a checkpoint is past it, or holds progress in it. Its budgets may
    change; nothing else. Stages not yet started take the new options: a resume may correct the
    options of a stage that stopped the run.
    """

    def stages(c: RunConfig) -> list[Any]:  # unchecked: the run's own may hold the option to correct
        return list(registry.build("schedule", c.schedule.name, c.schedule.options).stages())

    before, after = stages(stored), stages(config)
    started: set[int] = set()
    for ck in cks:
        state = ck.get("state") or {}
        at = int(state.get("stage", 0))
        progress = state.get("stages") or {}
        for i, stage in enumerate(before):
            if i < at or (i == at and any(bool(v) for v in (progress.get(stage.name) or {}).values())):
                started.add(i)
    out: dict[str, tuple[Any, Any]] = {}
    for i in sorted(started):
        if i >= len(after):
            continue  # the new schedule ends before this stage (a budget of 0): the run has finished
        a, b = _stage_settings(before[i]), _stage_settings(after[i])
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                out[f"stage {before[i].name!r} {k}"] = (a.get(k), b.get(k))
    return out


def _stage_settings(stage: Any) -> dict[str, Any]:
    """A stage as flat settings, its options with their defaults filled in; budgets left out."""
    from cryoforge.engine.stages import stage_options

    data = stage.model_dump(mode="json", exclude=set(_BUDGETS))
    with contextlib.suppress(ConfigError):  # (an option the run had wrong is compared as written)
        opts = stage_options(stage)
        data["options"] = opts.model_dump(mode="json") if hasattr(opts, "model_dump") else opts
    return _flatten(data)


def _split_encoder(sd: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A pipeline state dict as (everything but the encoder, the encoder's own keys)."""
    rest = {k: v for k, v in sd.items() if not k.startswith("encoder.")}
    return rest, {k[len("encoder.") :]: v for k, v in sd.items() if k.startswith("encoder.")}


def _check_shapes(pipeline: Pipeline, encoder_name: str, ck: dict[str, Any], path: Path) -> None:
    """The parameters of ``pipeline`` (built from the new options) have the checkpoint's shapes.

    The configured encoder is compared where the checkpoint holds it: in the model, or among
    the spare encoders when a stage had put its own encoder into the pipeline.
    """
    want_rest, want_encoder = _split_encoder(pipeline.state_dict())
    have_rest, have_encoder = _split_encoder(ck["model"])
    if (ck.get("state") or {}).get("encoder") is not None:  # a stage's own encoder was in use
        have_encoder = (ck.get("encoders") or {}).get(encoder_name)
    pairs = [(want_rest, have_rest, "")]
    if have_encoder is not None:
        pairs.append((want_encoder, have_encoder, "encoder."))
    for want, have, prefix in pairs:
        odd = sorted(set(want) ^ set(have))
        wrong = [k for k in want if k in have and tuple(want[k].shape) != tuple(have[k].shape)]
        if odd or wrong:
            k = (odd or wrong)[0]
            detail = (
                f"{prefix}{k}: {tuple(have[k].shape)} in the checkpoint, {tuple(want[k].shape)} now"
                if k in have and k in want
                else f"parameter {prefix}{k} is in only one of the checkpoint and the model"
            )
            raise InputFileError(path, f"the model does not match the checkpoint ({detail})", "--resume")


@contextlib.contextmanager
def claim_run_dir(
    run_dir: Path,
    resume: bool,
    overwrite: bool,
    data: dict[str, Any] | None = None,
    owner: bool = True,
    inputs: Iterable[str | Path | None] = (),
) -> Iterator[None]:
    """Hold ``run_dir`` for the run: lock it, check it again, mark it, clear what is replaced.

    A new run (or ``overwrite``) into a marked run removes that run's outputs (logs and
    TensorBoard included, so they start afresh); a resume keeps them. Temporary files of a
    killed write are removed. ``owner`` false (ranks other than 0) only yields.
    """
    if not owner:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir):
        kind = check_run_dir(
            run_dir, resume, overwrite, inputs, locked_ok=True
        )  # again: it may have changed meanwhile
        for p in remove_stale_temp_files(run_dir):
            log.info("removed %s, left by an interrupted write", p)
        if not resume and kind in ("run", "legacy"):
            clear_run_outputs(run_dir)
        write_run_marker(run_dir, fresh=not resume, **({"data": data} if data else {}))
        yield
