"""Ablation: every registered volume representation × losses × seeds, on one dataset, fixed budget.

    python examples/ablate.py --budget 100 --out docs/ablation            # the demo dataset
    python examples/ablate.py --particles p.star --gt-map gt.mrc --volumes fouriernet siren --seeds 0 1 2

Each run calls ``cryoforge.run()`` — the same entry point as ``cryoforge run`` — in its own process
(so its peak memory is its own). A newly installed volume plugin joins the sweep without edits.
Writes ``ablation.md`` (table), ``ablation.json`` (all numbers) and ``resolution_vs_time.png``.
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
    import cryoforge
    from cryoforge.config import ComponentConfig
    from cryoforge.demo import demo_config

    base = demo_config(Path(spec["out"]))
    cfg = base.model_copy(
        update={
            "source": ComponentConfig(name="star", options={"path": spec["particles"]}),
            "volume": ComponentConfig(name=spec["volume"]),
            "loss": ComponentConfig(name=spec["loss"]),
            "schedule": ComponentConfig(name="cryoai"),  # the representations under cryoAI's loop
            "ground_truth_map": spec["gt_map"],
            "train": base.train.model_copy(
                update={
                    "max_time_s": spec["budget"],
                    "seed": spec["seed"],
                    "export_every_s": spec["budget"] / 3,
                    "progress": False,
                    "tensorboard": False,
                }
            ),
        }
    )
    res = cryoforge.run(cfg)
    pipe = res.pipeline
    hist = [json.loads(x) for x in (Path(spec["out"]) / "history.jsonl").read_text().splitlines()]
    m = res.metrics
    return {
        **spec,
        "params": sum(p.numel() for p in pipe.volume.parameters()),
        "resolution_0.5_angstrom": m.get("resolution_0.5_angstrom"),
        "rot_median_deg": m.get("rot_median_deg"),
        "images_per_s": m["steps"] * cfg.train.batch_size / m["elapsed_s"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "history": hist,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--particles", help=".star (default: the built-in demo dataset)")
    ap.add_argument("--gt-map", help="ground-truth map for FSC (default: the demo's)")
    ap.add_argument(
        "--volumes", nargs="+", default=["*"], help="names or wildcards (default: all registered)"
    )
    ap.add_argument("--losses", nargs="+", default=["symmetrized", "l2"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--budget", type=float, default=100.0, help="seconds of training per run")
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
        from cryoforge.demo import ensure_demo_data

        particles = str(ensure_demo_data(out / "data"))
        gt = gt or str(out / "data" / "map.mrc")
    names = load_registry().names("volume")
    volumes = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in a.volumes)]
    rows = (
        json.loads((out / "ablation.json").read_text())
        if a.append and (out / "ablation.json").is_file()
        else []
    )
    for vol in volumes:
        for loss in a.losses:
            for seed in a.seeds:
                spec = {
                    "volume": vol,
                    "loss": loss,
                    "seed": seed,
                    "budget": a.budget,
                    "particles": particles,
                    "gt_map": gt,
                    "out": str(out / "runs" / f"{vol}_{loss}_{seed}"),
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
                print(f"   {r['resolution_0.5_angstrom']:.1f} Å, {r['rot_median_deg']:.0f}°", flush=True)
    write_outputs(rows, out)


def write_outputs(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(rows, indent=1, default=float))
    commands = sorted({r["command"] for r in rows}, key=[r["command"] for r in rows].index)
    budgets = sorted({r["budget"] for r in rows})
    lines = [
        "Produced by:",
        "",
        *[f"    {c}" for c in commands],
        "",
        f"Budget {', '.join(f'{b:.0f}' for b in budgets)} s of training per run on this machine's CPU; "
        "FSC-0.5 against the "
        "ground truth after alignment (both hands); rotation error after global alignment.",
        "",
        "| volume | loss | seed | parameters | FSC-0.5 resolution (Å) | median rotation error (°) "
        "| images/s | peak RSS (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['volume']} | {r['loss']} | {r['seed']} | | failed: {r['failed']} | | | |")
            continue
        lines.append(
            f"| {r['volume']} | {r['loss']} | {r['seed']} | {r['params']:,} | "
            f"{r['resolution_0.5_angstrom']:.1f} | {r['rot_median_deg']:.1f} | "
            f"{r['images_per_s']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    losses = sorted({r["loss"] for r in rows}, key=lambda x: x != "symmetrized")
    volumes = sorted({r["volume"] for r in rows})
    fig, axes = plt.subplots(1, len(losses), figsize=(5.5 * len(losses), 4.2), squeeze=False)
    for ax, loss in zip(axes[0], losses, strict=True):
        for vol in volumes:
            for r in (x for x in rows if x["volume"] == vol and x["loss"] == loss and "history" in x):
                h = [e for e in r["history"] if "resolution_0.5_angstrom" in e]
                ax.plot(
                    [e["elapsed_s"] for e in h],
                    [e["resolution_0.5_angstrom"] for e in h],
                    "o-",
                    label=f"{vol} (seed {r['seed']})",
                )
        ax.set_title(f"loss: {loss}")
        ax.set_xlabel("training wall-clock (s)")
        ax.set_ylabel("FSC-0.5 resolution (Å), lower is better")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "resolution_vs_time.png", dpi=110)
    print(f"wrote {out / 'ablation.md'} and {out / 'resolution_vs_time.png'}")


if __name__ == "__main__":
    main()
