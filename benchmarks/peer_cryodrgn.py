"""Score a cryoDRGN ``abinit`` run (4.3.1) and a cryoforge run on the same particles, same metrics.

cryoDRGN is run separately, in its own virtual environment (``pip install cryodrgn==4.3.1``), on
the first N particles of the demo::

    cryodrgn parse_ctf_star particles.star -o ctf.pkl
    python -c "import pickle, numpy; pickle.dump(numpy.arange(1000), open('ind.pkl', 'wb'))"
    cryodrgn abinit particles.star --ctf ctf.pkl --ind ind.pkl --zdim 0 \\
        -n 1 -o OUT --num-workers 0 --no-analysis --no-amp

for off-centre particles (its default translation search), or, for centred ones, with
``--no-trans --t-extent 0 --t-ngrid 1`` (``--no-trans`` alone still searches shifts;
``--ind 1000`` as a number fails in 4.3.1). Then::

    python benchmarks/peer_cryodrgn.py --truth demo/particles.star --map demo/map.mrc \\
        --cryodrgn OUT --epoch 1 --cryoforge RUN

prints the median rotation error, the median shift error (px, after one global 3D translation;
cryoDRGN's ``trans`` is ``+origin`` in RELION's origin sign: in pixels in ``abinit``'s pose pickles,
whose values reach its ``--t-extent`` of 20 px; a fraction of the box, ``+origin / D``, in
``parse_pose_star``'s, ``--trans-unit fraction``) and FSC-0.5
vs the truth of both (both hands, global rotation from the poses), the per-epoch timings from
cryoDRGN's log, and, for a run stopped before its first epoch ended, its time per image from the
log's progress lines.
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


def score(
    rot: np.ndarray,
    vol: np.ndarray | None,
    truth_rot: np.ndarray,
    truth_map: np.ndarray,
    px: float,
    shift_a: np.ndarray | None = None,
    truth_shift_a: np.ndarray | None = None,
) -> dict:
    """Pose errors (and shift errors when both shifts are given, Å in; px out) and FSC-0.5."""
    with_shifts = shift_a is not None and truth_shift_a is not None
    pe = pose_errors(
        torch.tensor(rot),
        torch.tensor(truth_rot),
        torch.tensor(shift_a) if with_shifts else None,
        torch.tensor(truth_shift_a) if with_shifts else None,
        px,
    )
    out = {"rot_median_deg": pe["rot_median_deg"], "mirrored": pe["mirrored"]}
    if with_shifts:
        out["trans_median_px"] = pe["trans_median_px"]
    if vol is None:
        return out
    al = align_map(
        torch.from_numpy(vol.astype(np.float32)), torch.from_numpy(truth_map), pe["_A"], pe["mirrored"]
    )
    rep = fsc_report(al.aligned, torch.from_numpy(truth_map), px).summary((0.5,))
    return {**out, "fsc_0.5": rep["resolution_0.5_text"]}


def seconds_per_image(log: str) -> float | None:
    """Seconds per image of the last epoch in cryoDRGN's log (its first pose-search epoch when the
    run stopped there), from the timestamps of its progress lines (``[k/n particles]``); the
    epoch's start is the previous epoch's end line."""
    pat = (
        r"(\d\d-\w{3}-\d{4} \d\d:\d\d:\d\d)\).*?"
        r"(?:Train Epoch: (\d+)/\d+\] \[(\d+)/\d+ particles\]|Epoch: \d+ finished)"
    )
    marks = re.findall(pat, log)
    if not marks:
        return None
    from datetime import datetime

    last = max(int(e) for _, e, _ in marks if e)
    start = None
    points = []
    for stamp, epoch, k in marks:
        t = datetime.strptime(stamp, "%d-%b-%Y %H:%M:%S").timestamp()
        if not epoch:  # an epoch's end: the next one starts here
            start = t
        elif int(epoch) == last:
            points.append((t, int(k)))
    if not points:
        return None
    t0, n0 = (start, 0) if start is not None else points[0]
    t, n = points[-1]
    return (t - t0) / (n - n0) if n > n0 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--truth", type=Path, required=True, help="star with the true poses")
    ap.add_argument("--map", type=Path, required=True, help="the true map")
    ap.add_argument("--cryodrgn", type=Path, help="cryoDRGN abinit output folder")
    ap.add_argument("--epoch", type=int, default=1)
    ap.add_argument("--cryoforge", type=Path, help="cryoforge run folder")
    ap.add_argument("-n", type=int, default=1000, help="particles (the first n)")
    ap.add_argument(
        "--trans-unit",
        choices=["px", "fraction"],
        default="px",
        help="unit of the pose pickle's trans: px (abinit 4.3.1 writes its search's pixels, up to its "
        "--t-extent) or fraction of the box (parse_pose_star's pickles)",
    )
    args = ap.parse_args()
    table = read_star(args.truth)
    truth, truth_shift = table.rotations[: args.n], table.shifts_angstrom[: args.n]
    gt, px = read_map(args.map)
    D = gt.shape[-1]
    if args.cryodrgn:
        log = (args.cryodrgn / "run.log").read_text(errors="replace")
        pose_file = args.cryodrgn / f"pose.{args.epoch}.pkl"
        if pose_file.is_file():
            obj = load_array_pickle(pose_file)  # numpy arrays only
            rot = np.asarray(obj[0] if isinstance(obj, tuple) else obj)
            unit = D if args.trans_unit == "fraction" else 1.0  # abinit's pickles hold pixels
            shift = np.asarray(obj[1]) * unit * px if isinstance(obj, tuple) and len(obj) > 1 else None
            vol = _read_mrc_any(args.cryodrgn / f"reconstruct.{args.epoch}.mrc")
            print("cryoDRGN", score(rot, vol, truth, gt, px, shift, truth_shift))
        else:
            print(f"cryoDRGN: no {pose_file.name} (stopped before the end of epoch {args.epoch})")
        for m in re.finditer(r"=====> (\w+) Epoch: (\d+) finished in ([\d:.]+)", log):
            print(f"  cryoDRGN {m[1]} epoch {m[2]}: {m[3]}")
        spi = seconds_per_image(log)
        if spi is not None:
            print(f"  cryoDRGN {spi:.3f} s per image from its progress lines")
    if args.cryoforge:
        mine = read_star(args.cryoforge / "poses.star")
        vol, _ = read_map(args.cryoforge / "map.mrc")
        print("cryoforge", score(mine.rotations, vol, truth, gt, px, mine.shifts_angstrom, truth_shift))


def _read_mrc_any(path: Path) -> np.ndarray:
    import mrcfile

    with mrcfile.open(path, permissive=True) as m:
        return np.asarray(m.data, dtype=np.float32)


if __name__ == "__main__":
    main()
