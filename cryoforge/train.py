"""The training loop, checkpoints, run directory, exports, pose inference, half-sets, DDP."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from cryoforge.config import RunConfig, resolve
from cryoforge.errors import ConfigError, TrainingDiverged
from cryoforge.evaluate import align_map, fsc_report, plot_fsc, pose_errors, write_json
from cryoforge.io.atomic import atomic_path
from cryoforge.io.mrc import read_map, write_mrc
from cryoforge.io.star import write_star
from cryoforge.pipeline import Pipeline
from cryoforge.plugins import build_registry, get_plugin_manager, plugin_versions
from cryoforge.registry import Registry
from cryoforge.roles import Source
from cryoforge.types import BuildContext, ParticleBatch, Pose
from cryoforge.volumes.base import CONTRAST_HINT, density_is_mostly_negative, volume_to_map

log = logging.getLogger("cryoforge")
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


# ----------------------------------------------------------------------------- set-up helpers


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} requested but CUDA is not available")
    return torch.device(name)


def distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def setup_logging(run_dir: Path, rank: int) -> None:
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        if getattr(h, "_cryoforge", False):
            log.removeHandler(h)
            h.close()
    if rank == 0:
        fh = logging.FileHandler(run_dir / "run.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        fh._cryoforge = True  # type: ignore[attr-defined]
        log.addHandler(fh)


def build_pipeline(config: RunConfig, registry: Registry, ctx: BuildContext) -> Pipeline:
    encoder = None
    if not config.train.gt_poses:
        encoder = registry.build("encoder", config.encoder.name, config.encoder.options, ctx)
    volume = registry.build("volume", config.volume.name, config.volume.options, ctx)
    imaging = registry.build("imaging", config.imaging.name, config.imaging.options, ctx)
    loss = registry.build("loss", config.loss.name, config.loss.options, ctx)
    return Pipeline(encoder, volume, imaging, loss)


def make_batch(source: Source, index: np.ndarray, device: torch.device) -> ParticleBatch:
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


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary unpickling)."""
    return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------- exports


def export(
    pipeline: Pipeline,
    source: Source,
    index: np.ndarray,
    config: RunConfig,
    run_dir: Path,
    device: torch.device,
    result: RunResult,
    progress: dict[str, float],
) -> None:
    """Write the map, the poses (RELION .star) and, when a reference exists, metrics and FSC plot."""
    L, px = source.image_size, source.pixel_size_angstrom
    vmap = volume_to_map(pipeline.volume, L)
    result.map_path = run_dir / "map.mrc"
    write_mrc(result.map_path, vmap.numpy(), px)
    metrics: dict[str, Any] = {}
    A = mirrored = None
    if pipeline.encoder is not None:
        pose = infer_poses(pipeline, source, index, max(256, config.train.batch_size), device)
        from cryoforge.io.table import CTF_FIELDS, ParticleTable

        table = getattr(source, "table", None)  # stack-backed sources; any Source works without
        if table is not None:
            ctf = {k: v[index] for k, v in table.ctf.items()}
        elif source.ctf is not None:
            ctf = {k: getattr(source.ctf, k)[torch.as_tensor(index)].double().numpy() for k in CTF_FIELDS}
        else:
            ctf = {k: np.zeros(len(index)) for k in CTF_FIELDS}
        out = ParticleTable(
            path=run_dir / "poses.star",
            image_names=source.absolute_image_names(index)
            if hasattr(source, "absolute_image_names")
            else None,
            ctf=ctf,
            rotations=pose.rotation.double().numpy(),
            shifts_angstrom=pose.shift_angstrom.double().numpy(),
            pixel_size_angstrom=getattr(source, "original_pixel_size_angstrom", px),
            box_size=getattr(source, "original_size", L),
            has_ctf=source.ctf is not None,
        )
        result.star_path = out.path
        write_star(out.path, out)
        if source.poses is not None:
            true = source.poses.index(torch.as_tensor(index))
            pe = pose_errors(pose.rotation, true.rotation, pose.shift_angstrom, true.shift_angstrom, px)
            A, mirrored = pe.pop("_A"), pe["mirrored"]
            metrics.update(pe)
    if config.ground_truth_map:
        gt, _ = read_map(config.ground_truth_map)
        gt_t = torch.from_numpy(gt)
        if gt_t.shape[-1] != L:  # downsample the reference like the data
            gt_t = _resample_map(gt_t, L)
        if pipeline.encoder is None:
            al = align_map(vmap, gt_t, torch.eye(3), False)
        elif A is not None:
            al = align_map(vmap, gt_t, A, mirrored)
        else:
            al = align_map(vmap, gt_t, n_search=100)
        rep = fsc_report(al.aligned, gt_t, px)
        metrics.update(rep.summary((0.5, 0.143)))
        metrics["map_mirrored"] = al.mirrored
        result.fsc_plot = run_dir / "fsc.png"
        plot_fsc({"map vs ground truth": rep}, result.fsc_plot)
        write_json(run_dir / "fsc.json", {"freq_per_px": rep.freqs.tolist(), "fsc": rep.values.tolist()})
    result.metrics.update(metrics)
    if metrics:
        write_json(run_dir / "metrics.json", metrics)
        entry = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        with open(run_dir / "history.jsonl", "a") as fh:  # metrics over time, one line per export
            fh.write(json.dumps({**entry, **progress}) + "\n")


def _resample_map(vol: torch.Tensor, L: int) -> torch.Tensor:
    """Fourier-crop an ``n³`` map to ``L³`` (coarser voxels, same physical box)."""
    from cryoforge.ops.fft import fourier_to_volume, volume_to_fourier

    n = vol.shape[-1]
    spec = volume_to_fourier(vol)
    c, h = n // 2, L // 2
    crop = spec[c - h : c - h + L, c - h : c - h + L, c - h : c - h + L] * (L / n) ** 2
    return fourier_to_volume(crop)


# ----------------------------------------------------------------------------- training


def train_one(
    config: RunConfig,
    registry: Registry,
    source: Source,
    index: np.ndarray,
    run_dir: Path,
    resume: bool = False,
) -> RunResult:
    """Train one model on the particles ``index`` of ``source``; outputs go to ``run_dir``."""
    tc = config.train
    rank, world = distributed()
    device = pick_device(tc.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir, rank)
    torch.manual_seed(tc.seed)
    ctx = BuildContext(source.image_size, source.pixel_size_angstrom)
    pipeline = build_pipeline(config, registry, ctx).to(device)
    if tc.gt_poses and source.poses is None:
        raise ConfigError("train.gt_poses: the source has no poses")
    lr_volume = tc.lr_volume or type(pipeline.volume).recommended_lr
    groups = [{"params": list(pipeline.volume.parameters()), "lr": lr_volume}]
    if pipeline.encoder is not None:
        groups.append({"params": list(pipeline.encoder.parameters()), "lr": tc.lr_encoder})
    extra = [p for m in (pipeline.imaging, pipeline.loss) for p in m.parameters()]
    if extra:
        groups.append({"params": extra, "lr": lr_volume})
    optimizer = torch.optim.Adam(groups, amsgrad=True)
    state = {"epoch": 0, "batch": 0, "step": 0, "elapsed_s": 0.0}
    ckpt_path = run_dir / CHECKPOINT
    result = RunResult(run_dir)
    if resume and ckpt_path.is_file():
        ck = load_checkpoint(ckpt_path)
        pipeline.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        state = {k: ck["state"][k] for k in state}
        result.history = [
            dict(zip(("step", "loss", "elapsed_s"), h, strict=True)) for h in ck.get("history", [])
        ]
        log.info("resumed from %s at epoch %d, step %d", ckpt_path, state["epoch"], state["step"])
    model: torch.nn.Module = pipeline
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            pipeline,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    if tc.compile:
        pipeline.volume = torch.compile(pipeline.volume)  # type: ignore[assignment]
        if pipeline.encoder is not None:
            pipeline.encoder = torch.compile(pipeline.encoder)  # type: ignore[assignment]
    writer = _tensorboard(run_dir) if (tc.tensorboard and rank == 0) else None

    def save() -> None:
        if rank != 0:
            return
        hist = [[h["step"], h["loss"], h["elapsed_s"]] for h in result.history]
        _atomic_save(
            {
                "model": pipeline.state_dict(),
                "optimizer": optimizer.state_dict(),
                "state": dict(state),
                "history": hist,
                "config": config.model_dump_json(),
            },
            ckpt_path,
        )

    def export_now() -> None:
        progress = {"elapsed_s": state["elapsed_s"], "steps": state["step"]}
        export(pipeline, source, index, config, run_dir, device, result, progress)

    n_batches = math.ceil(len(index) / (tc.batch_size * world))
    total_steps = tc.epochs * n_batches if tc.epochs else None
    if tc.max_steps is not None:
        total_steps = min(total_steps or tc.max_steps, tc.max_steps)
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16) if (tc.amp and device.type == "cuda") else nullcontext()
    )
    t0 = time.perf_counter() - state["elapsed_s"]
    last_ckpt = last_export = time.perf_counter()
    progress = _progress(tc.progress and rank == 0)
    images_seen, rate_t0 = 0, time.perf_counter()
    log.info(
        "training %s on %d particles (L=%d, %.3f Å/px) on %s",
        config.volume.name,
        len(index),
        ctx.image_size,
        ctx.pixel_size_angstrom,
        device,
    )
    stop = False
    with progress as bar:
        task = bar.add_task("train", total=total_steps, completed=state["step"], info="") if bar else None
        while not stop:
            if tc.epochs and state["epoch"] >= tc.epochs:
                break
            perm = np.random.default_rng(tc.seed + state["epoch"]).permutation(index)
            per_step = tc.batch_size * world
            for b in range(state["batch"], n_batches):
                chunk = perm[b * per_step : (b + 1) * per_step][rank::world]
                if len(chunk) == 0:
                    continue
                batch = make_batch(source, chunk, device)
                with amp:
                    out = model(batch, batch.pose if tc.gt_poses else None)
                loss = out.loss
                if not torch.isfinite(loss):
                    kept = (
                        f"the last good checkpoint is kept in {ckpt_path}"
                        if ckpt_path.is_file()
                        else "no checkpoint had been written yet"
                    )
                    raise TrainingDiverged(
                        f"loss became {loss.item()} at step {state['step']} (epoch {state['epoch']}); "
                        f"{kept}; lower train.lr_* or check the input data"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if tc.grad_clip:
                    torch.nn.utils.clip_grad_norm_(pipeline.parameters(), tc.grad_clip)
                optimizer.step()
                state["step"] += 1
                state["batch"] = b + 1
                images_seen += len(chunk) * world
                elapsed = time.perf_counter() - t0
                state["elapsed_s"] = elapsed
                lv = float(loss.detach())
                if state["step"] % tc.log_every == 0 or state["step"] == 1:
                    rate = images_seen / max(time.perf_counter() - rate_t0, 1e-9)
                    result.history.append({"step": state["step"], "loss": lv, "elapsed_s": elapsed})
                    log.info("epoch %d step %d loss %.5f %.1f img/s", state["epoch"], state["step"], lv, rate)
                    if writer:
                        writer.add_scalar("loss", lv, state["step"])
                        writer.add_scalar("images_per_s", rate, state["step"])
                    if bar:
                        bar.update(task, info=f"loss {lv:.4f} · {rate:.0f} img/s")
                if bar:
                    bar.update(task, completed=state["step"])
                now = time.perf_counter()
                ckpt_due = tc.checkpoint_every_steps and state["step"] % tc.checkpoint_every_steps == 0
                if ckpt_due or now - last_ckpt > tc.checkpoint_every_s:
                    save()
                    last_ckpt = now
                if rank == 0 and now - last_export > tc.export_every_s:
                    export_t0 = time.perf_counter()
                    export_now()
                    if writer:
                        writer.add_image(
                            "central_slice", _central_slice_image(result.map_path), state["step"]
                        )
                    last_export = time.perf_counter()
                    t0 += last_export - export_t0  # the training clock excludes exports
                    rate_t0 += last_export - export_t0
                if (total_steps is not None and state["step"] >= total_steps) or (
                    tc.max_time_s is not None and elapsed >= tc.max_time_s
                ):
                    stop = True
                    break
            else:
                state["epoch"] += 1
                state["batch"] = 0
    save()
    if rank == 0:
        export_now()
        if writer:
            writer.add_image("central_slice", _central_slice_image(result.map_path), state["step"])
            writer.close()
        if result.map_path is not None and density_is_mostly_negative(
            torch.from_numpy(read_map(result.map_path)[0])
        ):
            log.warning(CONTRAST_HINT)
            result.warnings.append(CONTRAST_HINT)
        result.metrics.update(
            {
                "steps": state["step"],
                "elapsed_s": state["elapsed_s"],
                "final_loss": result.history[-1]["loss"] if result.history else math.nan,
            }
        )
        write_json(run_dir / "metrics.json", result.metrics)
        log.info(
            "done: %s",
            json.dumps({k: v for k, v in result.metrics.items() if not k.startswith("_")}, default=float),
        )
    result.pipeline = pipeline
    return result


def _central_slice_image(map_path: Path | None) -> np.ndarray:
    vol, _ = read_map(map_path) if map_path else (np.zeros((2, 2, 2)), 1)
    sl = vol[vol.shape[0] // 2]
    sl = (sl - sl.min()) / max(float(np.ptp(sl)), 1e-9)
    return sl[None]


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _progress(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        transient=False,
    )


# ----------------------------------------------------------------------------- entry point


def prepare(config: RunConfig, plugins_dirs: list[str] | None = None) -> tuple[RunConfig, Registry, Source]:
    """Resolve the config against the registry and open the source (no training)."""
    pm = get_plugin_manager(plugins_dirs)
    registry = build_registry(pm)
    config = resolve(config, registry)
    config = config.model_copy(update={"plugins": plugin_versions(pm)})
    source = registry.build("source", config.source.name, config.source.options)
    return config, registry, source


def write_run_files(config: RunConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / "config.json") as tmp:
        tmp.write_text(config.model_dump_json(indent=2, exclude={"plugins"}))
    with atomic_path(run_dir / "plugins.json") as tmp:
        tmp.write_text(json.dumps(config.plugins, indent=2))


def run(
    config: RunConfig, plugins_dirs: list[str] | None = None, resume: bool = False, overwrite: bool = False
) -> RunResult:
    """Train as configured; see :class:`RunResult`.

    A directory that already holds a run is continued with ``resume`` and replaced only with
    ``overwrite``; otherwise it is left untouched and a :class:`ConfigError` says so.
    """
    config, registry, source = prepare(config, plugins_dirs)
    run_dir = Path(config.output_dir)
    if (run_dir / "config.json").is_file() and not (resume or overwrite):
        raise ConfigError(
            f"{run_dir}: already holds a run (continue it with --resume {run_dir}, "
            "replace it with --overwrite, or choose another --output-dir)"
        )
    rank, _ = distributed()
    if rank == 0:
        write_run_files(config, run_dir)
    index = np.arange(len(source))
    try:
        if not config.train.half_sets:
            return train_one(config, registry, source, index, run_dir, resume)
        halves = split_halves(len(source), config.train.seed)
        results = []
        for i, h in enumerate(halves):
            half_dir = run_dir / f"half{i + 1}"
            half_dir.mkdir(parents=True, exist_ok=True)
            if rank == 0:
                write_index(half_dir / "particles.txt", h)
            # independent halves: disjoint particles *and* different seeds (weights, batches)
            half_config = config.model_copy(
                update={"train": config.train.model_copy(update={"seed": config.train.seed + 1000 * (i + 1)})}
            )
            results.append(train_one(half_config, registry, source, h, half_dir, resume))
        return combine_halves(results, source, halves, config, run_dir) if rank == 0 else results[0]
    finally:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def split_halves(n: int, seed: int) -> list[np.ndarray]:
    """Two disjoint, sorted random halves of ``range(n)`` (the gold-standard split)."""
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])]


def write_index(path: Path, index: np.ndarray) -> None:
    """A particle index list, one 0-based index per line (cryoDRGN's ``--ind`` text form)."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{i}\n" for i in index))


def combine_halves(
    results: list[RunResult], source: Source, halves: list[np.ndarray], config: RunConfig, run_dir: Path
) -> RunResult:
    """Align half-map 2 onto half-map 1 and report the FSC at 0.143.

    Both encoders predict poses for the same images (half 1); the best global rotation between
    these pose sets (both hands) brings map 2 into map 1's frame.
    """
    device = pick_device(config.train.device)
    m1, _ = read_map(results[0].map_path)
    m2, _ = read_map(results[1].map_path)
    m1t, m2t = torch.from_numpy(m1), torch.from_numpy(m2)
    p1, p2 = (r.pipeline for r in results)
    if p1.encoder is not None:
        sample = halves[0][: min(len(halves[0]), 2000)]
        r1 = infer_poses(p1, source, sample, 256, device).rotation
        r2 = infer_poses(p2, source, sample, 256, device).rotation
        pe = pose_errors(r2, r1)
        al = align_map(m2t, m1t, pe["_A"], pe["mirrored"])
    else:
        al = align_map(m2t, m1t, torch.eye(3), False)
    rep = fsc_report(m1t, al.aligned, source.pixel_size_angstrom)
    result = RunResult(run_dir, map_path=run_dir / "map.mrc", fsc_plot=run_dir / "fsc_halves.png")
    write_mrc(result.map_path, ((m1t + al.aligned) / 2).numpy(), source.pixel_size_angstrom)
    plot_fsc({"half 1 vs half 2": rep}, result.fsc_plot)
    result.metrics = {"halfmap_" + k: v for k, v in rep.summary((0.5, 0.143)).items()}
    result.metrics["halves_mirrored"] = al.mirrored
    write_json(run_dir / "metrics.json", result.metrics)
    return result
