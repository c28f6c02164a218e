"""Training throughput, peak memory and pose-inference speed of the cryoAI pipeline.

    python benchmarks/bench_train.py [--sizes 32 64 128] [--preset paper cpu] [--device cpu]
    python benchmarks/bench_train.py --history demo_run/history.jsonl   # time to FSC thresholds

Each (preset, L) runs in its own process so peak RSS is its own. ``paper`` is the default
pipeline (VGG widths 64…512, FourierNet 256); ``cpu`` the demo's CPU-sized widths.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

PRESETS = {
    "paper": {},
    "cpu": {
        "encoder": {"channels": [16, 32, 64, 64], "head_hidden": [256, 128]},
        "volume": {"hidden_dim": 64},
    },
}


def measure(preset: str, L: int, device: str, batch: int, seconds: float) -> dict:
    import torch

    from cryoforge.pipeline import Pipeline
    from cryoforge.plugins import load_registry
    from cryoforge.types import BuildContext, CTFParams, ParticleBatch

    torch.manual_seed(0)
    reg = load_registry()
    ctx = BuildContext(L, 128 / L)
    o = PRESETS[preset]
    pipe = Pipeline(
        reg.build("encoder", "vgg", o.get("encoder", {}), ctx),
        reg.build("volume", "fouriernet", o.get("volume", {}), ctx),
        reg.build("imaging", "cryoai", {}, ctx),
        reg.build("loss", "symmetrized", {}, ctx),
    ).to(device)
    opt = torch.optim.Adam(pipe.parameters(), lr=1e-4, amsgrad=True)
    f = lambda v, n: torch.full((n,), float(v), device=device)

    def make(n: int) -> ParticleBatch:
        ctf = CTFParams(f(15000, n), f(14000, n), f(10, n), f(300, n), f(2.7, n), f(0.1, n), f(0, n), f(0, n))
        return ParticleBatch(torch.randn(n, L, L, device=device), ctf, torch.arange(n, device=device))

    b = make(batch)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(2):  # warm-up
        out = pipe(b)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        out = pipe(b)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        n += 1
    sync()
    train_ips = n * batch / (time.perf_counter() - t0)
    big = make(256)
    pipe.eval()
    with torch.no_grad():
        pipe(big)
        sync()
        m, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 2 or m < 2:
            pipe(big)
            m += 1
        sync()
    infer_ips = m * 256 / (time.perf_counter() - t0)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.startswith("cuda")
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    params = sum(p.numel() for p in pipe.parameters())
    return {
        "preset": preset,
        "L": L,
        "train_ips": train_ips,
        "infer_ips": infer_ips,
        "peak_mb": peak,
        "params": params,
        "device": device,
    }


def time_to_thresholds(history: str) -> None:
    rows = [json.loads(x) for x in open(history)]
    print("\n| FSC-0.5 resolution reached (Å) | elapsed (s) | steps |\n|---:|---:|---:|")
    for thr in (40, 30, 25, 20, 15, 12, 10, 8):
        hit = next((r for r in rows if r.get("resolution_0.5_angstrom", 1e9) <= thr), None)
        print(f"| {thr} | {hit['elapsed_s']:.0f} | {hit['steps']} |" if hit else f"| {thr} | not reached | |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--preset", nargs="+", default=["paper", "cpu"], choices=list(PRESETS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--history", help="a run's history.jsonl: print time to FSC thresholds")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.history:
        time_to_thresholds(a.history)
        return
    if a.child:
        print(json.dumps(measure(a.child[0], int(a.child[1]), a.device, a.batch, a.seconds)))
        return
    rows = []
    for preset in a.preset:
        for L in a.sizes:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    preset,
                    str(L),
                    "--device",
                    a.device,
                    "--batch",
                    str(a.batch),
                    "--seconds",
                    str(a.seconds),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    mem = "peak GPU MB" if a.device.startswith("cuda") else "peak RSS MB"
    print(f"\ncryoAI pipeline (vgg + fouriernet + cryoai + symmetrized), batch {a.batch}, {a.device}\n")
    print(f"| preset | L | parameters | train images/s | pose inference images/s | {mem} |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['L']} | {r['params']:,} | {r['train_ips']:,.1f} "
            f"| {r['infer_ips']:,.1f} | {r['peak_mb']:,.0f} |"
        )


if __name__ == "__main__":
    main()
