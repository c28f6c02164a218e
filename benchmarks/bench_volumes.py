"""Query throughput of each registered volume representation (forward + backward).

    python benchmarks/bench_volumes.py [--device cpu] [--n 65536] [--L 64]

Coordinates/s for one forward and backward pass over ``n`` random frequencies inside the Nyquist
ball, at each representation's default size.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    from cryoforge.plugins import load_registry
    from cryoforge.types import BuildContext

    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=65536)
    ap.add_argument("--L", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()
    reg = load_registry()
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    print(f"\nvolume query throughput, {a.n} coordinates per pass, L={a.L}, {a.device}\n")
    print("| volume | parameters | forward coords/s | forward+backward coords/s |")
    print("|---|---:|---:|---:|")
    for name in reg.names("volume"):
        vol = reg.build("volume", name, {}, BuildContext(a.L, 1.0)).to(a.device)
        k = (torch.rand(a.n, 3, device=a.device) - 0.5) * 0.95
        rates = []
        for backward in (False, True):
            vol(k).abs().sum().backward() if backward else vol(k)
            sync()
            m, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < a.seconds or m < 2:
                if backward:
                    vol.zero_grad()
                    vol(k).abs().sum().backward()
                else:
                    with torch.no_grad():
                        vol(k)
                m += 1
            sync()
            rates.append(m * a.n / (time.perf_counter() - t0))
        params = sum(p.numel() for p in vol.parameters())
        print(f"| {name} | {params:,} | {rates[0]:,.0f} | {rates[1]:,.0f} |")


if __name__ == "__main__":
    main()
