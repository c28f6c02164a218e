"""Scale benchmark: many particles end to end, the subset (amortized) path against searching every particle.

Each measurement simulates a dataset once (cached under ``--work``), runs ``cryoforge run`` with
``examples/demo.toml`` in a child process, and records the wall time of every stage
(``metrics.json``'s ``stage_wall_s``), the child's peak memory (``wait4``'s ``ru_maxrss``), and the
errors against the simulation's truth. Results are appended to ``benchmarks/results/scale.jsonl``
with the CPU model; ``table`` prints them and ``plot`` draws the cost curves.

Settings of the scale issue: 3 Å/px, SNR 0.05, origins σ = 2 px, defocus uniform in 1–3 µm
(``--preset scale``); ``--preset realistic`` adds the real-data issue's rest (coloured noise
measured on the β-galactosidase particles, B = 100 Å², 10 % junk, ΔU−V uniform in 0–500 Å).

Run one at a time on a 2-core machine::

    python benchmarks/bench_scale.py run --molecule 4AKE -n 100000 --box 64 --path amortized
    python benchmarks/bench_scale.py run --molecule 4AKE -n 100000 --box 64 --path search-all
    python benchmarks/bench_scale.py sweep --particles 10000 30000 100000 --box 64 --path search-all \\
        --amortize-steps 200 --tag _sweepN  # the amortize stage timed over 200 steps, scaled to 6,000
    python benchmarks/bench_scale.py sweep --particles 10000 --boxes 32 64 128 --path search-all \\
        --amortize-steps 200 --tag _sweep
    python benchmarks/bench_scale.py plot --tag _sweep --tag-n _sweepN  # docs/scale_costs.png, tables
    python benchmarks/bench_scale.py infer --run RUN -n 1000000 --box 64   # float16 stack, one pass
    python benchmarks/bench_scale.py table
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_abinit import CPU, MOLECULES, mda_model  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results" / "scale.jsonl"
BETAGAL = SHARED / "real" / "betagal" / "Extract" / "job009" / "particles.star"


def simulate_dataset(
    molecule: str, n: int, box: int, preset: str, seed: int, work: Path, float16: bool = False
) -> Path:
    """The dataset folder (cached): ``molecule`` in a 192 Å box (3 Å/px at L=64, the scale issue's)."""
    import numpy as np
    import torch

    from cryoforge.engine.evaluation import resample_map
    from cryoforge.io.mrc import write_mrc
    from cryoforge.simulation.simulate import SimulationSettings, simulate

    folder = work / f"{molecule}_{preset}_n{n}_L{box}_s{seed}{'_f16' if float16 else ''}"
    if (folder / "particles.star").is_file():
        return folder
    src, _ = MOLECULES[molecule]
    px = 3.0 * 64 / box  # 3 Å/px at L=64: the same 192 Å field of view at every box
    settings = dict(
        n_particles=n,
        box_size=box,
        pixel_size_angstrom=px,
        snr=0.05,
        seed=seed,
        shift_std_angstrom=2.0 * px,
        defocus_range_angstrom=(10_000.0, 30_000.0),
        float16=float16,
    )
    if preset == "realistic":
        settings.update(
            astigmatism_range_angstrom=(0.0, 500.0),
            bfactor_angstrom2=100.0,
            noise_like=str(BETAGAL) if BETAGAL.is_file() else None,
            junk_fraction=0.1,
        )
    if isinstance(src, str) and src.startswith("mda:"):
        src = mda_model(src.removeprefix("mda:"))
    t0 = time.perf_counter()
    if src == "builtin":
        simulate(None, folder, SimulationSettings(**settings))
    else:
        if str(src).endswith(".npy"):
            vol = torch.from_numpy(np.load(src))
            folder.mkdir(parents=True, exist_ok=True)
            write_mrc(folder / "input.mrc", resample_map(vol, box).numpy().astype(np.float32), px)
            src = folder / "input.mrc"
        simulate(src, folder, SimulationSettings(**settings))
    (folder / "simulate_wall_s.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    return folder


def child(cmd: list[str], threads: int, log: Path) -> tuple[int, float, float]:
    """Run ``cmd`` with ``threads`` threads; ``(return code, wall s, peak RSS in GB)`` of that child."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss / 1024**2


def run_one(args: argparse.Namespace, molecule: str, n: int, box: int) -> dict:
    data = simulate_dataset(molecule, n, box, args.preset, args.seed, args.work)
    out = args.work / f"run_{args.path}_{data.name}{args.tag}"
    over = {
        "ground_truth_map": str(data / "map.mrc"),
        "train.seed": args.seed,
        "train.progress": False,
        "train.tensorboard": False,
        "train.pictures": False,
        "train.export_every_s": 1e9,
    }
    if args.path == "search-all":
        over["schedule.subset"] = None
    elif args.subset:
        over["schedule.subset"] = args.subset
    if args.amortize_steps is not None:
        over["schedule.amortize_steps"] = args.amortize_steps
    for item in args.override or []:
        k, v = item.split("=", 1)
        over[k] = json.loads(v)
    cmd = [sys.executable, "-m", "cryoforge.cli", "run", "--config", str(ROOT / "examples" / "demo.toml")]
    cmd += ["--particles", str(data / "particles.star"), "-d", str(out), "--overwrite"]
    for k, v in over.items():
        cmd += ["-o", k, json.dumps(v)]
    rc, wall, peak = child(cmd, args.threads, args.work / f"{out.name}.log")
    metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else {}
    row = {
        "kind": "run",
        "path": args.path,
        "molecule": molecule,
        "n": n,
        "box": box,
        "preset": args.preset,
        "seed": args.seed,
        "subset": over.get("schedule.subset", "default"),
        "threads": args.threads,
        "cpu": CPU,
        "rc": rc,
        "wall_s": round(wall, 1),
        "peak_gb": round(peak, 2),
        "stage_wall_s": {k: round(v, 1) for k, v in metrics.get("stage_wall_s", {}).items()},
        "rot_median_deg": metrics.get("rot_median_deg"),
        "rot_p90_deg": metrics.get("rot_p90_deg"),
        "trans_median_px": metrics.get("trans_median_px"),
        "fsc_0.5_px": metrics.get("resolution_0.5_px"),
        "mirrored": metrics.get("map_mirrored"),
        "tag": args.tag,
        "overrides": args.override or [],
        "amortize_steps_timed": args.amortize_steps,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    if rc != 0:
        row["error"] = (args.work / f"{out.name}.log").read_text()[-500:]
    return row


def infer_one(args: argparse.Namespace) -> list[dict]:
    """``cryoforge infer`` with a trained run on a float16 stack: images/s and peak memory."""
    molecule = args.molecule[0]
    data = simulate_dataset(molecule, args.n[0], args.box[0], args.preset, args.seed + 1, args.work, True)
    rows = []
    for single in {"both": (True, False), "single": (True,), "average": (False,)}[args.views]:
        part = f"_first{args.first}" if args.first else ""
        out = args.work / f"infer_{data.name}{part}_{'single' if single else 'avg'}.star"
        cmd = [sys.executable, "-m", "cryoforge.cli", "infer", str(args.run), "--particles"]
        cmd += [str(data / "particles.star"), "--out", str(out), "--overwrite"]
        if single:
            cmd.append("--single-view")
        if args.first:
            cmd += ["--first", str(args.first)]
        rc, wall, peak = child(cmd, args.threads, out.with_suffix(".log"))
        rows.append(
            {
                "kind": "infer",
                "molecule": molecule,
                "n": args.first or args.n[0],
                "stack_n": args.n[0],
                "box": args.box[0],
                "single_view": single,
                "cpu": CPU,
                "threads": args.threads,
                "rc": rc,
                "wall_s": round(wall, 1),
                "images_per_s": round((args.first or args.n[0]) / wall, 1),
                "peak_gb": round(peak, 2),
                "date": time.strftime("%Y-%m-%d %H:%M"),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    head = (
        f"{'path':<10} {'mol':<5} {'N':>8} {'L':>4} {'subset':>7} {'wall':>8} {'peak':>6} "
        f"{'rot°':>6} {'p90°':>6} {'sh px':>6} {'FSC.5':>6}  stages (s); tag"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.get("kind") != "run":
            continue
        stages = " ".join(f"{k} {v:.0f}" for k, v in r.get("stage_wall_s", {}).items())

        def f(x, fmt=".2f"):
            return "—" if x is None else format(x, fmt)

        lines.append(
            f"{r['path']:<10} {r['molecule']:<5} {r['n']:>8} {r['box']:>4} {r['subset']!s:>7} "
            f"{r['wall_s']:>8.0f} {r['peak_gb']:>6.2f} {f(r['rot_median_deg']):>6} {f(r['rot_p90_deg']):>6} "
            f"{f(r['trans_median_px']):>6} {f(r['fsc_0.5_px']):>6}  {stages}"
            + (f"; {r['tag']}" if r.get("tag") else "")
        )
    for r in rows:
        if r.get("kind") == "infer":
            lines.append(
                f"infer {r['molecule']} N={r['n']} L={r['box']} single_view={r['single_view']}: "
                f"{r['images_per_s']} images/s, peak {r['peak_gb']} GB, {r['wall_s']} s"
            )
    return "\n".join(lines)


def sweep_rows(rows: list[dict], tag: str) -> list[dict]:
    """The finished runs of one sweep (``--tag``), each with its amortize stage scaled to the shipped
    6,000 steps (``amortize_steps_timed`` steps were timed) in ``stage_s`` and ``total_s``."""
    out = []
    for r in rows:
        if r.get("kind") != "run" or r.get("rc") != 0 or r.get("tag") != tag:
            continue
        stages = {k: v for k, v in r["stage_wall_s"].items() if v >= 0.05}
        timed = r.get("amortize_steps_timed")
        if timed and "amortize" in stages:
            stages["amortize"] = stages["amortize"] * 6000 / timed
        out.append({**r, "stage_s": stages, "total_s": sum(stages.values())})
    return out


def growth(xs: list[float], ys: list[float]) -> float | None:
    """The exponent ``p`` of ``y ∝ xᵖ`` fitted in log-log (``None`` below two points)."""
    import numpy as np

    if len(xs) < 2 or min(ys) <= 0:
        return None
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def costs(rows: list[dict], tag_n: str, tag_box: str) -> str:
    """Markdown tables of the two sweeps (N at L=64 from ``tag_n``'s runs, L at N=10,000 from
    ``tag_box``'s) with each stage's growth."""
    parts = []
    for key, fixed, label, tag in (("n", ("box", 64), "N", tag_n), ("box", ("n", 10_000), "L", tag_box)):
        runs = sweep_rows(rows, tag)
        sel = sorted((r for r in runs if r[fixed[0]] == fixed[1]), key=lambda r: r[key])
        if not sel:
            continue
        stages = [
            s for s in ("search", "fit", "amortize", "infer", "refine") if any(s in r["stage_s"] for r in sel)
        ]
        head = f"| {label} | " + " | ".join(f"{s} (s)" for s in stages) + " | total (s) | peak (GB) |"
        lines = [head, "|" + "---:|" * (len(stages) + 3)]
        for r in sel:
            cells = [f"{r['stage_s'].get(s, 0):,.0f}" for s in stages]
            lines.append(
                f"| {r[key]:,} | " + " | ".join(cells) + f" | {r['total_s']:,.0f} | {r['peak_gb']:.2f} |"
            )
        xs = [r[key] for r in sel]
        exps = [growth(xs, [r["stage_s"].get(s, 0) for r in sel]) for s in stages]
        exps.append(growth(xs, [r["total_s"] for r in sel]))
        exps.append(growth(xs, [r["peak_gb"] for r in sel]))
        lines.append(
            f"| growth ∝ {label}^p | " + " | ".join("—" if p is None else f"p = {p:.2f}" for p in exps) + " |"
        )
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def plot(rows: list[dict], path: Path, tag_n: str, tag_box: str) -> None:
    """Per-stage wall time against N (at L=64; ``tag_n``'s runs) and against L (at N=10,000;
    ``tag_box``'s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, fixed, label, tag in (
        (axes[0], "n", ("box", 64), "particles N (L=64)", tag_n),
        (axes[1], "box", ("n", 10_000), "box L (N=10,000)", tag_box),
    ):
        runs = sweep_rows(rows, tag)
        sel = sorted((r for r in runs if r[fixed[0]] == fixed[1]), key=lambda r: r[key])
        xs = [r[key] for r in sel]
        for s in ("search", "fit", "amortize", "infer", "refine"):
            ys = [r["stage_s"].get(s) for r in sel]
            if all(y is not None for y in ys) and ys:
                p = growth(xs, ys)
                ax.loglog(xs, ys, "o-", label=s + ("" if p is None else f" (∝ x^{p:.2f})"))
        if sel:
            p = growth(xs, [r["total_s"] for r in sel])
            ax.loglog(
                xs,
                [r["total_s"] for r in sel],
                "k--",
                label="end to end" + ("" if p is None else f" (∝ x^{p:.2f})"),
            )
        ax.set_xlabel(label)
        ax.set_ylabel("wall time (s), amortize scaled to 6,000 steps")
        ax.legend(fontsize=7)
    fig.suptitle(f"cryoforge cost per stage (search every particle), {CPU}, 2 threads", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["run", "sweep", "infer", "table", "plot"])
    ap.add_argument("--molecule", nargs="+", default=["4AKE"])
    ap.add_argument("-n", "--n", "--particles", nargs="+", type=int, default=[10_000])
    ap.add_argument("--box", "--boxes", nargs="+", type=int, default=[64])
    ap.add_argument("--path", choices=["amortized", "search-all"], default="amortized")
    ap.add_argument("--subset", type=int, default=None, help="schedule.subset (default: the schedule's)")
    ap.add_argument("--amortize-steps", type=int, default=None)
    ap.add_argument("--preset", choices=["scale", "realistic"], default="scale")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--run", type=Path, help="a trained run (infer)")
    ap.add_argument("--first", type=int, default=None, help="infer: only the first N particles of the stack")
    ap.add_argument("--views", choices=["both", "single", "average"], default="both", help="infer: which")
    ap.add_argument("--override", "-o", action="append", help="KEY=JSON passed to cryoforge run")
    ap.add_argument("--tag", default="")
    ap.add_argument("--tag-n", default=None, help="plot: the N sweep's tag (default: --tag, the box sweep's)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cryoforge-scale"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(x) for x in RESULTS.read_text().splitlines()] if RESULTS.is_file() else []
    if args.what == "table":
        print(table(rows))
        return
    if args.what == "plot":
        plot(rows, ROOT / "docs" / "scale_costs.png", args.tag_n or args.tag, args.tag)
        print(costs(rows, args.tag_n or args.tag, args.tag))
        print(ROOT / "docs" / "scale_costs.png")
        return
    new = []
    if args.what == "infer":
        new = infer_one(args)
    else:
        for molecule in args.molecule:
            for n in args.n:
                for box in args.box:
                    row = run_one(args, molecule, n, box)
                    print(json.dumps(row), flush=True)
                    new.append(row)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as fh:
        for row in new:
            fh.write(json.dumps(row) + "\n")
    print(table(new))


if __name__ == "__main__":
    main()
