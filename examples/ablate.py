"""Ablation: every registered volume representation × losses × seeds, on one dataset, step budgets.

    python examples/ablate.py --seeds 0 1 2 --out docs/ablation             # the demo dataset
    python examples/ablate.py --particles p.star --gt-map gt.mrc --volumes fouriernet siren --seeds 0 1 2
    python examples/ablate.py --schedule cryoai --steps 1000                  # the paper's single stage

Each run is ``examples/demo.toml`` (the default ``abinit`` schedule: search, fit, amortize) with the
volume, loss and seed swapped, through ``cryoforge.run()`` — the same entry point as
``cryoforge run`` — in its own process (so its peak memory is its own). ``--steps`` is the
budget of the stage that trains the volume (``fit_steps``; with ``--schedule cryoai``,
``train.max_steps``), never seconds, so the result does not depend on machine load. A newly
installed volume plugin joins the sweep without edits. Writes ``ablation.md`` (table),
``ablation.json`` (all numbers) and ``fsc_curves.png``.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import resource
import subprocess
import sys
from pathlib import Path


def child(spec: dict) -> dict:
    import time

    import numpy as np
    import torch

    import cryoforge
    from cryoforge.config import ComponentConfig
    from cryoforge.engine.infer import infer_run
    from cryoforge.io.star import read_star
    from cryoforge.metrics.poses import pose_errors
    from cryoforge.simulation.demo import demo_config

    base = demo_config(Path(spec["out"]))
    train = {"seed": spec["seed"], "progress": False, "tensorboard": False, "pictures": False}
    schedule = base.schedule
    if spec["schedule"] == "cryoai":  # the paper's single gradient stage
        schedule = ComponentConfig(name="cryoai")
        train["max_steps"] = spec["steps"]
    else:
        opts = dict(schedule.options, fit_steps=spec["steps"])
        if spec.get("amortize_steps") is not None:
            opts["amortize_steps"] = spec["amortize_steps"]
        schedule = schedule.model_copy(update={"options": opts})
    cfg = base.model_copy(
        update={
            "source": ComponentConfig(name="star", options={"path": spec["particles"]}),
            "volume": ComponentConfig(name=spec["volume"]),
            "loss": ComponentConfig(name=spec["loss"]),
            "schedule": schedule,
            "ground_truth_map": spec["gt_map"],
            "train": base.train.model_copy(update=train),
        }
    )
    t0 = time.perf_counter()
    res = cryoforge.run(cfg)
    wall = time.perf_counter() - t0
    run_dir = Path(spec["out"])
    fsc = json.loads((run_dir / "fsc.json").read_text())["fsc"]
    m = res.metrics
    row = {
        **spec,
        "params": sum(p.numel() for p in res.pipeline.volume.parameters()),
        "resolution_0.5_angstrom": m.get("resolution_0.5_angstrom"),
        "resolution_0.143_angstrom": m.get("resolution_0.143_angstrom"),
        "mean_fsc": float(np.mean(fsc[1:])),  # shells 1..Nyquist: separates maps that all reach Nyquist
        "fsc": fsc,
        "rot_median_deg": m.get("rot_median_deg"),
        "wall_s": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    trained_encoder = spec["schedule"] == "cryoai" or schedule.options.get("amortize_steps", 1) > 0
    if res.pipeline.encoder is not None and trained_encoder:  # one pass over the particles
        out = infer_run(run_dir, None, str(run_dir / "encoder_poses.star"))
        truth = read_star(Path(spec["particles"])).rotations
        if truth is not None:
            pe = pose_errors(torch.tensor(read_star(out).rotations), torch.tensor(truth))
            row["encoder_rot_median_deg"] = pe["rot_median_deg"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--particles", help=".star (default: the built-in demo dataset)")
    ap.add_argument("--gt-map", help="ground-truth map for FSC (default: the demo's)")
    ap.add_argument(
        "--volumes", nargs="+", default=["*"], help="names or wildcards (default: all registered)"
    )
    ap.add_argument("--losses", nargs="+", default=["symmetrized", "l2"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--schedule", choices=["abinit", "cryoai"], default="abinit")
    ap.add_argument("--steps", type=int, default=300, help="steps of the stage that trains the volume")
    ap.add_argument("--amortize-steps", type=int, help="encoder steps (default: examples/demo.toml's)")
    ap.add_argument("--out", default="ablation")
    ap.add_argument("--append", action="store_true", help="add to the rows of an earlier sweep in --out")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print("ABLATION_RESULT " + json.dumps(child(json.loads(a.child)), default=float))
        return
    from cryoforge.plugins import load_registry

    out = Path(a.out)
    particles, gt = a.particles, a.gt_map
    if particles is None:
        from cryoforge.simulation.demo import ensure_demo_data

        particles = str(ensure_demo_data(out / "data"))
        gt = gt or str(out / "data" / "map.mrc")
    names = load_registry().names("volume")
    volumes = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in a.volumes)]
    rows = (
        json.loads((out / "ablation.json").read_text())
        if a.append and (out / "ablation.json").is_file()
        else []
    )
    tag = f"{a.schedule}{a.steps}" + ("" if a.amortize_steps is None else f"_amortize{a.amortize_steps}")
    for vol in volumes:
        for loss in a.losses:
            for seed in a.seeds:
                spec = {
                    "volume": vol,
                    "loss": loss,
                    "seed": seed,
                    "schedule": a.schedule,
                    "steps": a.steps,
                    "amortize_steps": a.amortize_steps,
                    "particles": particles,
                    "gt_map": gt,
                    "out": str(out / "runs" / f"{vol}_{loss}_{seed}_{tag}"),
                    "command": "python examples/ablate.py " + " ".join(sys.argv[1:]),
                }
                print(f"== {vol} / {loss} / seed {seed}", flush=True)
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True
                )
                line = [x for x in proc.stdout.splitlines() if x.startswith("ABLATION_RESULT ")]
                if proc.returncode != 0 or not line:
                    print(f"   failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
                    rows.append({**spec, "failed": (proc.stderr.strip().splitlines() or ["?"])[-1]})
                    continue
                rows.append(json.loads(line[0][len("ABLATION_RESULT ") :]))
                r = rows[-1]
                print(f"   mean FSC {r['mean_fsc']:.3f}, {r['rot_median_deg']:.1f}°", flush=True)
    write_outputs(rows, out)


def _fmt(x: float | None, spec: str) -> str:
    return "" if x is None else format(x, spec)


def write_outputs(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(rows, indent=1, default=float))
    commands = sorted({r["command"] for r in rows}, key=[r["command"] for r in rows].index)
    lines = [
        "Produced by:",
        "",
        *[f"    {c}" for c in commands],
        "",
        "Budgets in steps (schedule, volume steps). FSC against the ground truth after alignment "
        "(both hands); mean FSC over the shells from 1 px⁻¹ to Nyquist; rotation errors after "
        "global alignment: the run's pose table, and the amortized encoder's one-pass predictions.",
        "",
        "| volume | loss | seed | schedule | steps | parameters | FSC-0.5 (Å) | FSC-0.143 (Å) | mean FSC "
        "| table rot err (°) | encoder rot err (°) | wall (s) | peak RSS (MB) |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        head = (
            f"| {r['volume']} | {r['loss']} | {r['seed']} | {r.get('schedule', '')} | {r.get('steps', '')} "
        )
        if "failed" in r:
            lines.append(head + f"| | failed: {r['failed']} | | | | | | |")
            continue
        lines.append(
            head + f"| {r['params']:,} | {_fmt(r['resolution_0.5_angstrom'], '.1f')} | "
            f"{_fmt(r.get('resolution_0.143_angstrom'), '.1f')} | {r['mean_fsc']:.3f} | "
            f"{_fmt(r['rot_median_deg'], '.2f')} | {_fmt(r.get('encoder_rot_median_deg'), '.1f')} | "
            f"{r['wall_s']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    losses = sorted({r["loss"] for r in rows}, key=lambda x: x != "symmetrized")
    volumes = sorted({r["volume"] for r in rows})
    fig, axes = plt.subplots(1, len(losses), figsize=(5.5 * len(losses), 4.2), squeeze=False)
    for ax, loss in zip(axes[0], losses, strict=True):
        for k, vol in enumerate(volumes):
            for j, r in enumerate(x for x in rows if x["volume"] == vol and x["loss"] == loss and "fsc" in x):
                n = len(r["fsc"])
                freq = [i / (2 * (n - 1)) for i in range(n)]
                ax.plot(freq, r["fsc"], color=f"C{k}", label=vol if j == 0 else None, lw=1)
        ax.axhline(0.5, color="0.6", ls="--", lw=0.8)
        ax.axhline(0.143, color="0.6", ls=":", lw=0.8)
        ax.set_title(f"loss: {loss} (one line per seed)")
        ax.set_xlabel("spatial frequency (1/px; Nyquist 0.5)")
        ax.set_ylabel("FSC vs ground truth")
        ax.set_ylim(-0.05, 1.02)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "fsc_curves.png", dpi=110)
    print(f"wrote {out / 'ablation.md'} and {out / 'fsc_curves.png'}")


if __name__ == "__main__":
    main()
