"""Does the CTF of a particle file explain its particles, band by band?

For a half-set run of real particles: half 1's particles at half 1's poses are compared, through
the file's CTF and variants of it, with half 2's backprojection aligned onto half 1
(``RUN/halfmap2.mrc``: a reference that never saw half 1's images). Prints the mean per-particle
correlation (× 1000) per resolution band for each CTF variant: a defocus scale, astigmatism
conventions, another voltage, no CTF.

    python benchmarks/check_ctf_bands.py RUN --particles good.star --datadir DIR

Only the bands where the reference holds signal (its half-map FSC well above 0) can tell the
variants apart.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from cryoforge.io.mrc import read_map
from cryoforge.io.star import read_star
from cryoforge.ops.ctf import ctf_2d
from cryoforge.ops.fft import rfft2_images
from cryoforge.ops.grids import half_plane_query
from cryoforge.ops.projection import oversampled_spectrum, project_fourier
from cryoforge.ops.shift import origin_phase
from cryoforge.plugins import load_registry

BANDS_SHELLS = {
    "45-25 Å": (45.0, 25.0),
    "25-19 Å": (25.0, 19.0),
    "19-14 Å": (19.0, 14.0),
    "14-10 Å": (14.0, 10.0),
}


def variants() -> dict[str, dict]:
    out: dict[str, dict] = {f"defocus x{a:.2f}": {"scale": a} for a in (0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2)}
    out.update(
        {
            "angle negated": {"neg_angle": True},
            "U, V swapped": {"swap": True},
            "no astigmatism": {"mean": True},
            "300 kV": {"kv": 300.0},
            "sign of CTF(0) only": {"flat": True},
            "no CTF": {"noctf": True},
        }
    )
    return out


def ctf_variant(c, freqs_per_angstrom: torch.Tensor, o: dict) -> torch.Tensor:
    """``(B, M)`` CTF of the particles' parameters ``c`` changed as ``o`` says."""
    du, dv = (
        c.defocus_u_angstrom.double() * o.get("scale", 1.0),
        c.defocus_v_angstrom.double() * o.get("scale", 1.0),
    )
    ang = c.astigmatism_angle_deg.double()
    if o.get("neg_angle"):
        ang = -ang
    if o.get("swap"):
        du, dv = dv, du
    if o.get("mean"):
        du = dv = (du + dv) / 2
    kv = torch.full_like(du, o["kv"]) if "kv" in o else c.voltage_kv.double()
    C = ctf_2d(
        freqs_per_angstrom,
        du,
        dv,
        ang,
        kv,
        c.cs_mm.double(),
        c.amplitude_contrast.double(),
        c.phase_shift_deg.double(),
    )
    if o.get("flat"):
        C = C.abs() * torch.sign(C[:, :1])
    if o.get("noctf"):
        C = torch.ones_like(C)
    return C


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a half-set run folder (half1/particles.txt, half1/poses.star, halfmap2.mrc)")
    ap.add_argument("--particles", required=True, help="the run's particle .star")
    ap.add_argument("--datadir", default=None, help="folder the star's image paths are relative to")
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    opts = {"path": args.particles, "normalize": True, "datadir": args.datadir}
    src = load_registry().build("source", "star", opts)
    L, px = src.image_size, src.pixel_size_angstrom
    idx = np.loadtxt(f"{args.run}/half1/particles.txt", dtype=int)
    table = read_star(f"{args.run}/half1/poses.star")
    rot = torch.from_numpy(table.rotations).double()
    shift = torch.from_numpy(table.shifts_angstrom).double()
    vol, _ = read_map(f"{args.run}/halfmap2.mrc")
    spec = oversampled_spectrum(torch.from_numpy(vol).double())
    flat_index, k2 = half_plane_query(L)
    k2 = k2.double()
    res = 1.0 / (k2.norm(dim=1) / px).clamp_min(1e-9)  # Å
    bands = {name: (res <= lo) & (res > hi) for name, (lo, hi) in BANDS_SHELLS.items()}
    ctf = src.ctf.index(torch.from_numpy(idx))
    vs = variants()
    acc = {v: dict.fromkeys(bands, 0.0) for v in vs}
    for s in range(0, len(idx), args.batch):
        rows = torch.arange(s, min(len(idx), s + args.batch))
        data = rfft2_images(torch.from_numpy(src.read_images(idx[rows.numpy()])).double())
        data = data.reshape(len(rows), -1)[:, flat_index]
        proj = project_fourier(spec, rot[rows], k2) * origin_phase(k2, shift[rows] / px)
        for name, o in vs.items():
            model = proj * ctf_variant(ctf.index(rows), k2 / px, o)
            for b, sel in bands.items():
                d, m = data[:, sel], model[:, sel]
                cc = (d * m.conj()).real.sum(1) / ((d.abs() ** 2).sum(1) * (m.abs() ** 2).sum(1)).sqrt()
                acc[name][b] += float(cc.sum())
    print(f"{len(idx)} particles of half 1 against half 2's backprojection; mean correlation x 1000")
    print(f"{'CTF':<22}" + "".join(f"{b:>12}" for b in bands))
    for name in vs:
        print(f"{name:<22}" + "".join(f"{1000 * acc[name][b] / len(idx):>12.1f}" for b in bands))


if __name__ == "__main__":
    main()
