"""Score a cryoDRGN ``abinit`` run (4.3.1) and a cryoforge run on the same particles, same metrics.

cryoDRGN is run separately, in its own virtual environment (``pip install cryodrgn==4.3.1``), on
the first N particles of the demo::

    cryodrgn parse_ctf_star particles.star -o ctf.pkl
    python -c "import pickle, numpy; pickle.dump(numpy.arange(1000), open('ind.pkl', 'wb'))"
    cryodrgn abinit particles.star --ctf ctf.pkl --ind ind.pkl --zdim 0 --no-trans \\
        --t-extent 0 --t-ngrid 1 -n 1 -o OUT --num-workers 0 --no-analysis --no-amp

(``--t-extent 0 --t-ngrid 1``: ``--no-trans`` alone still searches shifts; ``--ind 1000`` as a
number fails in 4.3.1.) Then::

    python benchmarks/peer_cryodrgn.py --truth demo/particles.star --map demo/map.mrc \\
        --cryodrgn OUT --epoch 1 --cryoforge RUN

prints the median rotation error and FSC-0.5 vs the truth of both (both hands, global rotation
from the poses), and the per-epoch timings from cryoDRGN's log.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import torch

from cryoforge.io.mrc import read_map
from cryoforge.io.star import read_star
from cryoforge.metrics.alignment import align_map
from cryoforge.metrics.fsc import fsc_report
from cryoforge.metrics.poses import pose_errors
from cryoforge.sources.pickles import load_array_pickle


def score(rot: np.ndarray, vol: np.ndarray, truth_rot: np.ndarray, truth_map: np.ndarray, px: float) -> dict:
    pe = pose_errors(torch.tensor(rot), torch.tensor(truth_rot))
    al = align_map(
        torch.from_numpy(vol.astype(np.float32)), torch.from_numpy(truth_map), pe["_A"], pe["mirrored"]
    )
    rep = fsc_report(al.aligned, torch.from_numpy(truth_map), px).summary((0.5,))
    return {
        "rot_median_deg": pe["rot_median_deg"],
        "mirrored": pe["mirrored"],
        "fsc_0.5": rep["resolution_0.5_text"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--truth", type=Path, required=True, help="star with the true poses")
    ap.add_argument("--map", type=Path, required=True, help="the true map")
    ap.add_argument("--cryodrgn", type=Path, help="cryoDRGN abinit output folder")
    ap.add_argument("--epoch", type=int, default=1)
    ap.add_argument("--cryoforge", type=Path, help="cryoforge run folder")
    ap.add_argument("-n", type=int, default=1000, help="particles (the first n)")
    args = ap.parse_args()
    truth = read_star(args.truth).rotations[: args.n]
    gt, px = read_map(args.map)
    if args.cryodrgn:
        obj = load_array_pickle(args.cryodrgn / f"pose.{args.epoch}.pkl")  # numpy arrays only
        rot = np.asarray(obj[0] if isinstance(obj, tuple) else obj)
        vol = _read_mrc_any(args.cryodrgn / f"reconstruct.{args.epoch}.mrc")
        print("cryoDRGN", score(rot, vol, truth, gt, px))
        log = (args.cryodrgn / "run.log").read_text(errors="replace")
        for m in re.finditer(r"=====> (\w+) Epoch: (\d+) finished in ([\d:.]+)", log):
            print(f"  cryoDRGN {m[1]} epoch {m[2]}: {m[3]}")
    if args.cryoforge:
        rot = read_star(args.cryoforge / "poses.star").rotations
        vol, _ = read_map(args.cryoforge / "map.mrc")
        print("cryoforge", score(rot, vol, truth, gt, px))


def _read_mrc_any(path: Path) -> np.ndarray:
    import mrcfile

    with mrcfile.open(path, permissive=True) as m:
        return np.asarray(m.data, dtype=np.float32)


if __name__ == "__main__":
    main()
