"""Reading particle batches from memory-mapped stacks: images/s, and peak memory vs dataset size.

    python benchmarks/bench_io.py [--sizes 10000 200000] [--L 64] [--dir /tmp/cryoforge-bench]

Each size runs in its own process so peak RSS (ru_maxrss) is that size's alone. Memory must stay
flat as the number of particles grows: stacks are memory-mapped and only batches are read.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_dataset(folder: Path, n: int, L: int) -> Path:
    import mrcfile
    import pandas as pd
    import starfile

    folder.mkdir(parents=True, exist_ok=True)
    stack, star = folder / f"stack_{n}.mrcs", folder / f"particles_{n}.star"
    if not star.is_file():
        with mrcfile.new_mmap(stack, shape=(n, L, L), mrc_mode=2, overwrite=True) as m:
            rng = np.random.default_rng(0)
            for s in range(0, n, 5000):
                m.data[s : s + 5000] = rng.standard_normal((min(5000, n - s), L, L), dtype=np.float32)
            m.set_image_stack()
            m.voxel_size = 2.0
        optics = pd.DataFrame(
            {
                "rlnOpticsGroup": [1],
                "rlnVoltage": [300.0],
                "rlnSphericalAberration": [2.7],
                "rlnAmplitudeContrast": [0.1],
                "rlnImagePixelSize": [2.0],
                "rlnImageSize": [L],
            }
        )
        parts = pd.DataFrame(
            {
                "rlnImageName": [f"{i + 1}@{stack.name}" for i in range(n)],
                "rlnDefocusU": 15000.0,
                "rlnDefocusV": 14000.0,
                "rlnDefocusAngle": 0.0,
                "rlnOpticsGroup": 1,
            }
        )
        starfile.write({"optics": optics, "particles": parts}, star)
    return star


def measure(star: str, batches: int, batch_size: int) -> dict:
    from cryoforge.sources.star import StarSource
    from cryoforge.types import BuildContext

    t0 = time.perf_counter()
    src = StarSource(StarSource.Options(path=star), BuildContext())
    open_s = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    for _ in range(batches):
        src.read_images(rng.choice(len(src), batch_size, replace=False))
    dt = time.perf_counter() - t0
    return {
        "n": len(src),
        "open_s": open_s,
        "images_per_s": batches * batch_size / dt,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 200000])
    ap.add_argument("--L", type=int, default=64)
    ap.add_argument("--dir", default="/tmp/cryoforge-bench")
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure(a.child, a.batches, a.batch_size)))
        return
    rows = []
    for n in a.sizes:
        star = make_dataset(Path(a.dir), n, a.L)
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(star),
                "--batches",
                str(a.batches),
                "--batch-size",
                str(a.batch_size),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"\nmemory-mapped reads, L={a.L}, random batches of {a.batch_size}\n")
    print("| particles | stack size (GB) | open (s) | images/s | peak RSS (MB) |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        gb = r["n"] * a.L * a.L * 4 / 1e9
        print(
            f"| {r['n']:,} | {gb:.2f} | {r['open_s']:.2f} | {r['images_per_s']:,.0f} "
            f"| {r['peak_rss_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
