"""``cryoforge reconstruct`` peak memory vs number of images: it must stay flat (streamed batches).

    python benchmarks/bench_reconstruct.py [--sizes 5000 20000 100000] [--L 128] [--quick]

Each size runs ``reconstruct`` in its own process, so the peak RSS (``ru_maxrss``) is that
size's alone. The dataset (random images, random poses, a CTF) is written on the fly as one
memory-mapped stack in a temporary folder (``--dir`` to keep it). Before streaming, reconstruct
held every image in memory: 1.39 GB for 3,000 images of 128 px.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def dataset_paths(folder: Path, n: int, L: int) -> tuple[Path, Path]:
    """The stack and star of the ``n``-image, ``L``-px dataset in ``folder``."""
    return folder / f"stack_{n}_{L}.mrcs", folder / f"particles_{n}_{L}.star"


def make_dataset(folder: Path, n: int, L: int) -> Path:
    """``n`` random ``L``-px images with random RELION angles and defocus: a star and an mrcs."""
    import mrcfile
    import pandas as pd
    import starfile

    folder.mkdir(parents=True, exist_ok=True)
    stack, star = dataset_paths(folder, n, L)
    if star.is_file():
        return star
    rng = np.random.default_rng(0)
    with mrcfile.new_mmap(stack, shape=(n, L, L), mrc_mode=2, overwrite=True) as m:
        for s in range(0, n, 2000):
            m.data[s : s + 2000] = rng.standard_normal((min(2000, n - s), L, L), dtype=np.float32)
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
            "rlnDefocusU": rng.uniform(1e4, 2e4, n),
            "rlnDefocusV": rng.uniform(1e4, 2e4, n),
            "rlnDefocusAngle": rng.uniform(-180, 180, n),
            "rlnOpticsGroup": 1,
            "rlnAngleRot": rng.uniform(-180, 180, n),
            "rlnAngleTilt": np.degrees(np.arccos(rng.uniform(-1, 1, n))),
            "rlnAnglePsi": rng.uniform(-180, 180, n),
            "rlnOriginXAngst": rng.normal(0, 2, n),
            "rlnOriginYAngst": rng.normal(0, 2, n),
        }
    )
    starfile.write({"optics": optics, "particles": parts}, star)
    return star


def child(star: str, out: str) -> None:
    """Run in a fresh process: reconstruct, then print peak RSS and time as JSON."""
    from cryoforge.engine.reconstruct import reconstruct_file

    t0 = time.perf_counter()
    reconstruct_file(Path(star), Path(out), None, True, overwrite=True)  # the bench's own map
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": rss_mb, "seconds": time.perf_counter() - t0}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 100000])
    ap.add_argument("--L", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="small sizes: 1000 2000 4000 images of 64 px")
    ap.add_argument("--dir", type=Path, default=None, help="keep the datasets here (default: a temp dir)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--make", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.make:
        make_dataset(Path(a.make[0]), int(a.make[1]), int(a.make[2]))
        return
    if a.child:
        child(*a.child)
        return
    sizes, L = ([1000, 2000, 4000], 64) if a.quick else (a.sizes, a.L)
    folder = a.dir or Path(tempfile.mkdtemp(prefix="cryoforge-bench-rec-"))
    rows = []
    try:
        for n in sizes:
            # written by its own process: a parent that had just written the stack would hand its
            # resident pages to the reconstruct child at fork, and ru_maxrss counts them
            subprocess.run([sys.executable, __file__, "--make", str(folder), str(n), str(L)], check=True)
            star = dataset_paths(folder, n, L)[1]
            os.sync()  # a stack written just now is dirty in the page cache: read right away, its
            # pages stayed in the reader's RSS (772 MB at 40k images of 64 px, against 422 MB synced)
            stack_mb = n * L * L * 4 / 2**20
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(star), str(folder / f"map_{n}.mrc")],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                sys.exit(f"reconstruct of {n} images failed:\n{proc.stderr.strip()}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append((n, L, stack_mb, r["peak_rss_mb"], r["seconds"]))
            print(
                f"{n:>8} images {L} px: stack {stack_mb:8.0f} MB, peak RSS {r['peak_rss_mb']:7.0f} MB, "
                f"{r['seconds']:7.1f} s",
                flush=True,
            )
    finally:
        if a.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    print("\n| images | box (px) | stack on disk (MB) | peak RSS (MB) | time (s) |")
    print("|---:|---:|---:|---:|---:|")
    for n, L_, mb, rss, s in rows:
        print(f"| {n} | {L_} | {mb:.0f} | {rss:.0f} | {s:.1f} |")


if __name__ == "__main__":
    main()
