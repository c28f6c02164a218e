"""Ab initio benchmark: configurations × molecules × seeds, budgets in steps and iterations.

For each run it simulates the molecule (L=32, 5,000 particles, SNR 1, CTF, 15,000 Å median
defocus, like the demo), runs ``cryoforge.run`` with ``examples/demo.toml`` plus the configuration's
overrides, and records the wall time, the time at which FSC-0.5 vs the truth first reached 4, 3 and
2.5 px (from ``history.jsonl``, training clock), and the final median rotation error and FSC-0.5.
Results are appended to ``benchmarks/results/abinit.jsonl``; the table is printed and the
resolution-vs-time plot written to ``docs/abinit_resolution.png``.

Run one at a time on a 2-core machine (two torch processes slow each other down)::

    python benchmarks/bench_abinit.py --configs default --molecules 4AKE --seeds 0 1 2
    python benchmarks/bench_abinit.py --table       # print the table of what was measured
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results" / "abinit.jsonl"

# molecule → (model or map, pixel size in Å at L=32): the box holds the particle with margin
MOLECULES = {
    "4AKE": ("builtin", 3.0),  # adenylate kinase, 214 residues (the demo)
    "4E43": (SHARED / "structures" / "4E43.pdb", 3.0),  # HIV protease, C2 homodimer
    "19HC": (SHARED / "structures" / "19HC.pdb", 4.0),  # nine-haem cytochrome c, pseudo-symmetric pair
    "3PWP": (SHARED / "structures" / "3PWP.pdb", 6.0),  # TCR-pMHC, 95 kDa, radius 73 Å
    "70S": (SHARED / "relion_project" / "clean70SRibosome_vol.npy", 8.125),  # ribosome map, 65 px at 4 Å
    # molecules nobody tuned to, from the MDAnalysisTests source distribution (fetched on first
    # use into MDA_CACHE); the pixel size puts the longest dimension at ≤ 2/3 of the 32-px box
    "4AKE-closed": (SHARED / "structures" / "adk_closed.pdb", 3.0),  # the closed conformation
    "1BD2": ("mda:mmcif/1BD2.pdb.gz", 6.5),  # TCR-peptide-MHC, 5 chains, axis ratio 3.4 (elongated)
    "3KPR": ("mda:mmcif/3KPR.pdb.gz", 8.5),  # two TCR-pMHC complexes, 10 chains, 13k atoms, ratio 2.6
    "1A28": ("mda:1a28.pdb.gz", 4.5),  # progesterone receptor, 2 chains, ratio 2.0
    "1DX5": ("mda:dssp/1dx5I.pdb.gz", 3.2),  # one chain, axis ratio 3.6 (elongated)
    "2ZMM": ("mda:merge/2zmm/protein.pdb", 3.0),  # one chain, ratio 1.7
    # session 20: three more nobody tuned to (longest dimension 51–65 Å)
    "3E8M": ("mda:dssp/3e8mA.pdb.gz", 2.7),  # one chain, 2,646 atoms, ratio 1.3
    "3Q4O": ("mda:dssp/3q4oA.pdb.gz", 2.5),  # one chain, ratio 1.9
    "1OSM": ("mda:1osm.pdb.gz", 3.1),  # porin OmpK36, one chain of the trimer, ratio 1.6
}
MDA_CACHE = Path.home() / ".cache" / "cryoforge-bench" / "mdanalysistests"


def mda_model(rel: str) -> Path:
    """A PDB file of the MDAnalysisTests sdist (``pip download --no-deps mdanalysistests``), unpacked once."""
    import gzip
    import subprocess
    import sys
    import tarfile

    out = MDA_CACHE / rel.removesuffix(".gz")
    if out.is_file():
        return out
    MDA_CACHE.mkdir(parents=True, exist_ok=True)
    tars = sorted(MDA_CACHE.glob("mdanalysistests-*.tar.gz"))
    if not tars:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", MDA_CACHE]
        subprocess.run([*cmd, "mdanalysistests==2.11.0"], check=True)
        tars = sorted(MDA_CACHE.glob("mdanalysistests-*.tar.gz"))
    with tarfile.open(tars[-1]) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith("MDAnalysisTests/data/" + rel))
        data = tf.extractfile(member).read()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(gzip.decompress(data) if rel.endswith(".gz") else data)
    return out


# configuration → overrides of examples/demo.toml
CONFIGS: dict[str, dict] = {
    "default": {},
    "cryoai": {  # the paper's single stage (baseline), CPU widths, a step budget
        "schedule": {"name": "cryoai", "options": {}},
        "train.max_steps": 3000,
    },
    # mechanisms removed one at a time (poses and map only: no amortization)
    "search-only": {"schedule.amortize_steps": 0},
    # the search's poses alone: FSC of their known-pose backprojection (reconstruct) vs the truth
    "search-bp": {"schedule.amortize_steps": 0, "schedule.fit_steps": 1},
    "hard-assignment": {"schedule.search": {"keep": 1}, "schedule.amortize_steps": 0},
    "no-refinement": {"schedule.search": {"refine_steps_deg": []}, "schedule.amortize_steps": 0},
    "no-marching": {"schedule.search": {"band_px": [8.0, 8.0]}, "schedule.amortize_steps": 0},
    "march-5": {"schedule.search": {"band_px": [5.0, 8.0]}, "schedule.amortize_steps": 0},  # milder
    "march-4": {"schedule.search": {"band_px": [4.0, 8.0]}, "schedule.amortize_steps": 0},
    # the encoder: the previous default (raw images), and half the steps on phase-flipped images
    "amortize-6000-raw": {"schedule.amortize_steps": 6000, "encoder.options.ctf_input": "raw"},
    "amortize-3000": {"schedule.amortize_steps": 3000},
}


BOX = 32  # set by --box; the physical box stays the same (pixel size × 32 / box)


def cpu_model() -> str:
    """The CPU model (``lscpu``'s "Model name"), with whether it has native bf16 (AVX512-BF16/AMX)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = next((ln for ln in info.splitlines() if ln.startswith("flags")), "")
    bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    return f"{name} ({'with' if bf16 else 'without'} AVX512-BF16/AMX)"


CPU = cpu_model()


def stage_times(log: Path) -> dict[str, float]:
    """Wall seconds of each stage, from the run log's timestamps (stage start to the next stage)."""
    import datetime
    import re

    if not log.is_file():
        return {}
    marks = []
    for line in log.read_text().splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) INFO (?:stage \d+ '([^']+)'|done)", line)
        if m:
            t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            marks.append((m.group(2) or "done", t))
    return {a: round(tb - ta, 1) for (a, ta), (_, tb) in itertools.pairwise(marks)}


def simulate_molecule(
    name: str, folder: Path, seed: int, n: int = 5000, snr: float | None = 1.0, shift_px: float = 0.0
) -> Path:
    """Simulate ``name`` into ``folder`` (particles.star, map.mrc) at ``BOX`` px; return the star.

    ``shift_px`` is the σ of the Gaussian origins in px (``--shift-std`` is σ × the pixel size).
    """
    import numpy as np
    import torch

    from cryoforge.engine.evaluation import resample_map
    from cryoforge.io.mrc import write_mrc
    from cryoforge.simulation.simulate import SimulationSettings, simulate

    src, px = MOLECULES[name]
    px = px * 32 / BOX
    settings = SimulationSettings(
        n_particles=n,
        box_size=BOX,
        pixel_size_angstrom=px,
        snr=snr,
        seed=seed,
        defocus_median_angstrom=15000,
        shift_std_angstrom=shift_px * px,
    )
    if isinstance(src, str) and src.startswith("mda:"):
        src = mda_model(src.removeprefix("mda:"))
    if src == "builtin":
        return simulate(None, folder, settings).star
    if str(src).endswith(".npy"):
        vol = torch.from_numpy(np.load(src))  # 65³ at 4 Å/px → Fourier-cropped to 32³
        folder.mkdir(parents=True, exist_ok=True)
        write_mrc(folder / "input.mrc", resample_map(vol, BOX).numpy().astype(np.float32), px)
        src = folder / "input.mrc"
    return simulate(src, folder, settings).star


def run_one(
    config: str, molecule: str, seed: int, work: Path, n: int, snr: float | None, shift_px: float = 0.0
) -> dict:
    from cryoforge.config import apply_override, load_config_file
    from cryoforge.engine.run import run

    tag = "" if not shift_px else f"_sh{shift_px:g}px"
    data = work / f"{molecule}{tag}_s{seed}"
    if not (data / "particles.star").is_file():
        simulate_molecule(molecule, data, seed, n, snr, shift_px)
    cfg = load_config_file(ROOT / "examples" / "demo.toml")
    over = {
        "source.path": str(data / "particles.star"),
        "output_dir": str(work / f"run_{config}_{molecule}{tag}_s{seed}"),
        "ground_truth_map": str(data / "map.mrc"),
        "train.seed": seed,
        "train.progress": False,
        "train.tensorboard": False,
        "train.export_every_s": 20,
        **CONFIGS[config],
    }
    for k, v in over.items():
        cfg = apply_override(cfg, k, v)
    t0, c0 = time.perf_counter(), time.process_time()
    res = run(cfg, overwrite=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    hist = [json.loads(line) for line in (Path(cfg.output_dir) / "history.jsonl").read_text().splitlines()]
    reached = {}
    for px in (4.0, 3.0, 2.5):
        hit = [h for h in hist if (h.get("resolution_0.5_px") or math.inf) <= px]
        reached[f"t_fsc_{px}px_s"] = hit[0]["elapsed_s"] if hit else None
        reached[f"steps_fsc_{px}px"] = hit[0]["steps"] if hit else None
    m = dict(res.metrics)
    if config == "search-bp":  # the map is the backprojection at the search's poses, not a fit
        m.update(backprojection_fsc(Path(cfg.output_dir), data / "map.mrc"))
    infer = {}
    if CONFIGS[config].get("schedule.amortize_steps", 1) and cfg.schedule.name == "abinit":
        infer = amortized_inference(molecule, seed, work, Path(cfg.output_dir), n, snr, shift_px)
    return {
        **infer,
        "config": config,
        "molecule": molecule,
        "seed": seed,
        "n": n,
        "snr": snr,
        "box": BOX,
        "shift_px": shift_px,
        "pixel_size": MOLECULES[molecule][1] * 32 / BOX,
        "cpu": CPU,
        "wall_s": wall,
        "cpu_s": cpu,
        "stage_s": stage_times(Path(cfg.output_dir) / "run.log"),
        "train_s": m.get("elapsed_s"),
        "steps": m.get("steps"),
        "rot_median_deg": m.get("rot_median_deg"),
        "trans_median_px": m.get("trans_median_px"),
        "trans_p90_px": m.get("trans_p90_px"),
        "mirrored": m.get("mirrored"),
        "fsc_0.5_px": m.get("resolution_0.5_px"),
        "fsc_0.5_text": m.get("resolution_0.5_text"),
        **reached,
        "history": [(h["elapsed_s"], h.get("resolution_0.5_px"), h.get("rot_median_deg")) for h in hist],
    }


def backprojection_fsc(run_dir: Path, truth: Path) -> dict:
    """FSC-0.5 vs ``truth`` of the known-pose backprojection at a run's ``poses.star`` (both hands)."""
    from cryoforge.engine.reconstruct import reconstruct_file
    from cryoforge.metrics.files import evaluate_files

    bp = reconstruct_file(run_dir / "poses.star", run_dir / "backprojection.mrc", None, True, overwrite=True)
    ev = evaluate_files(str(bp), str(truth), None, None, None, run_dir / "bp_eval", overwrite=True)
    return {k: ev[k] for k in ("resolution_0.5_px", "resolution_0.5_text") if k in ev}


def amortized_inference(
    molecule: str, seed: int, work: Path, run_dir: Path, n: int, snr: float | None, shift_px: float = 0.0
) -> dict:
    """``cryoforge infer`` on ``n`` fresh particles of the molecule: median error, no search."""
    import torch

    from cryoforge.engine.infer import infer_run
    from cryoforge.io.star import read_star
    from cryoforge.metrics.poses import pose_errors

    fresh = work / f"{molecule}{'' if not shift_px else f'_sh{shift_px:g}px'}_fresh_s{seed}"
    if not (fresh / "particles.star").is_file():
        simulate_molecule(molecule, fresh, seed + 100, n, snr, shift_px)
    t0 = time.perf_counter()
    out = infer_run(
        run_dir, str(fresh / "particles.star"), str(run_dir / "fresh_inferred.star"), overwrite=True
    )
    wall = time.perf_counter() - t0
    pred, true = read_star(out), read_star(fresh / "particles.star")
    pe = pose_errors(
        torch.tensor(pred.rotations),
        torch.tensor(true.rotations),
        torch.tensor(pred.shifts_angstrom),
        torch.tensor(true.shifts_angstrom),
        float(true.pixel_size_angstrom),
    )
    return {
        "infer_fresh_rot_median_deg": pe["rot_median_deg"],
        "infer_fresh_trans_median_px": pe["trans_median_px"],
        "infer_fresh_wall_s": wall,
    }


def table(rows: list[dict]) -> str:
    head = (
        "| config | molecule | seed | wall (s) | t FSC≤4 / 3 / 2.5 px (s) | median rot err (°) "
        "| FSC-0.5 | hand | infer on 5k fresh: median err (°) | shift err median / p90 (px) |"
    )
    out = [head, "|" + "---|" * 10]
    for r in rows:
        t = " / ".join(
            "—" if r[f"t_fsc_{p}px_s"] is None else f"{r[f't_fsc_{p}px_s']:.0f}" for p in (4.0, 3.0, 2.5)
        )
        hand = "mirror (reported)" if r["mirrored"] else "correct"
        snr = "" if r.get("snr") == 1.0 else f" (SNR {r.get('snr')})"
        snr += "" if r.get("box", 32) == 32 else f" (L={r['box']})"
        snr += f" (σ {r['shift_px']:g} px)" if r.get("shift_px") else ""
        shift = "—"
        if r.get("trans_median_px") is not None:
            shift = f"{r['trans_median_px']:.2f} / {r['trans_p90_px']:.2f}"
            if r.get("infer_fresh_trans_median_px") is not None:
                shift += f" (infer {r['infer_fresh_trans_median_px']:.2f})"
        out.append(
            f"| {r['config']}{snr} | {r['molecule']} | {r['seed']} | {r['wall_s']:.0f} | {t} | "
            f"{r['rot_median_deg']:.2f} | {r['fsc_0.5_text']} | {hand} | "
            + (
                "—"
                if r.get("infer_fresh_rot_median_deg") is None
                else f"{r['infer_fresh_rot_median_deg']:.1f}"
            )
            + f" | {shift} |"
        )
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        pts = [(t, px) for t, px, _ in r["history"] if px is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker=".", label=f"{r['config']} {r['molecule']} s{r['seed']}")
    ax.axhline(2.5, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("training time (s, 2 CPU cores)")
    ax.set_ylabel("FSC-0.5 vs truth (px; Nyquist = 2)")
    ax.set_ylim(1.8, 12)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["default"], choices=list(CONFIGS))
    ap.add_argument("--molecules", nargs="+", default=["4AKE"], choices=list(MOLECULES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("-n", type=int, default=5000, help="particles")
    ap.add_argument("--snr", type=float, default=1.0, help="<= 0: no noise")
    ap.add_argument("--work", type=Path, default=None, help="folder for data and runs (default: temporary)")
    ap.add_argument("--box", type=int, default=32, help="L in px (pixel size scaled to keep the box in Å)")
    ap.add_argument("--shift-px", type=float, default=0.0, help="σ of the Gaussian origins, px")
    ap.add_argument("--table", action="store_true", help="only print the table of saved results")
    args = ap.parse_args()
    global BOX
    BOX = args.box
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if not args.table:
        work = args.work or Path(tempfile.mkdtemp(prefix="bench_abinit_"))
        try:
            for mol in args.molecules:
                for seed in args.seeds:
                    for config in args.configs:
                        row = run_one(
                            config, mol, seed, work, args.n, args.snr if args.snr > 0 else None, args.shift_px
                        )
                        with open(RESULTS, "a") as fh:
                            fh.write(json.dumps(row) + "\n")
                        print(table([row]).splitlines()[-1], flush=True)
        finally:
            if args.work is None:
                shutil.rmtree(work, ignore_errors=True)
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines()] if RESULTS.is_file() else []
    print(table(rows))
    if rows:
        plot(rows, ROOT / "docs" / "abinit_resolution.png")


if __name__ == "__main__":
    main()
