"""RELION's meaning of a pose, contrast and per-particle optics, proven on files other programs wrote.

The self-consistency trap: a simulator and a reconstructor that share a wrong sign pass every round
trip. Each convention here is checked against a file cryoforge did not write: RELION's own
projections (``relion_project``), cryoDRGN's readings of RELION/cryoSPARC files (``expected/``), or
an analytic result (the exact transform of a voxel map).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cryoforge.cli import cli
from cryoforge.io.mrc import read_map, write_mrc
from cryoforge.metrics.fsc import fsc
from cryoforge.ops.ctf import ctf_2d
from cryoforge.ops.fft import fourier_to_volume, volume_to_fourier
from cryoforge.ops.grids import half_plane_query
from cryoforge.ops.projection import oversampled_spectrum, project_fourier
from cryoforge.ops.rotations import random_rotations
from cryoforge.simulation.simulate import SimulationSettings, simulate, simulate_images
from cryoforge.types import BuildContext


def _corr(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-image Pearson correlation of ``(B, L, L)`` stacks."""
    a = a.double() - a.double().mean((1, 2), keepdim=True)
    b = b.double() - b.double().mean((1, 2), keepdim=True)
    return ((a * b).sum((1, 2)) / (a.norm(dim=(1, 2)) * b.norm(dim=(1, 2)))).numpy()


@pytest.fixture(scope="module")
def relion_project(shared_data: Path) -> Path:
    return shared_data / "relion_project"


def _ribosome(relion_project: Path, L: int) -> torch.Tensor:
    """The 65³ map, or its Fourier crop to 64³ (frequencies −32…31, scaled by (64/65)³)."""
    vol = torch.from_numpy(np.load(relion_project / "clean70SRibosome_vol.npy"))
    if L == 65:
        return vol
    spec = volume_to_fourier(vol) * 65  # plain DFT
    c = 65 // 2
    crop = spec[c - 32 : c + 32, c - 32 : c + 32, c - 32 : c + 32] * (64 / 65) ** 3
    return fourier_to_volume(crop / 64)


def _render(registry, source, vol: torch.Tensor) -> torch.Tensor:
    """The learned rendering path (imaging ``cryoai`` + a 2×-oversampled ``voxel`` volume)."""
    L = source.image_size
    ctx = BuildContext(L, source.pixel_size_angstrom)
    vox = registry.build("volume", "voxel", {"size": 2 * L}, ctx)
    spec = oversampled_spectrum(vol, 2)
    with torch.no_grad():
        vox.grid.copy_(torch.stack([spec.real, spec.imag])[None].float())
        imaging = registry.build("imaging", "cryoai", {}, ctx)
        return imaging(vox, source.poses, source.ctf)


@pytest.mark.parametrize("kind", ["centered", "shifted"])
def test_relion_projections_are_reproduced_at_the_stars_poses(registry, relion_project, kind, tmp_path):
    """RELION's ``relion_project`` output, read through the normal star source: rendering,
    simulator and ``simulate --like`` all reproduce it (origin ``o`` ⇒ particle at ``−o``)."""
    star = relion_project / f"rln_proj_64_{kind}.star"
    source = registry.build("source", "star", {"path": str(star), "normalize": False})
    assert source.ctf is None  # optics has voltage and Cs but no defocus: CTF-free
    if kind == "shifted":
        assert source.poses.shift_angstrom.abs().max() >= 6  # rlnOriginX/Y in px, 1 Å/px
    observed = torch.from_numpy(source.read_images(np.arange(len(source))))
    vol = _ribosome(relion_project, 64)
    assert _corr(_render(registry, source, vol), observed).min() >= 0.99
    origins_px = source.poses.shift_angstrom.double() / source.pixel_size_angstrom
    sim = simulate_images(vol, source.poses.rotation.double(), origins_px, None, 1.0)
    assert _corr(sim, observed).min() >= 0.99
    if kind == "shifted":  # the opposite sign does not reproduce them
        wrong = simulate_images(vol, source.poses.rotation.double(), -origins_px, None, 1.0)
        assert _corr(wrong, observed).max() < 0.6
    write_mrc(tmp_path / "map.mrc", vol.numpy(), 1.0)
    r = CliRunner().invoke(
        cli,
        [
            "simulate",
            str(tmp_path / "map.mrc"),
            "--like",
            str(star),
            "--out",
            str(tmp_path / "sim"),
            "--snr",
            "0",
            "--wrap",  # relion_project translates periodically
        ],
    )
    assert r.exit_code == 0, r.output
    like = registry.build(
        "source", "star", {"path": str(tmp_path / "sim" / "particles.star"), "normalize": False}
    )
    assert like.ctf is None
    assert _corr(torch.from_numpy(like.read_images(np.arange(len(like)))), observed).min() >= 0.99


def test_relion_65px_projections_are_offset_by_one_pixel(registry, relion_project):
    """The odd-box set: reproduced after a (+1, +1) px translation, as ASPIRE notes (reported)."""
    from cryoforge.ops.shift import translate_images

    source = registry.build(
        "source", "star", {"path": str(relion_project / "rln_proj_65_shifted.star"), "normalize": False}
    )
    observed = torch.from_numpy(source.read_images(np.arange(len(source))))
    pred = _render(registry, source, _ribosome(relion_project, 65)).double()
    assert _corr(pred, observed).max() < 0.95
    moved = translate_images(pred, torch.ones(len(source), 2, dtype=torch.float64))
    assert _corr(moved, observed).min() >= 0.99


def test_simulator_images_are_the_maps_exact_projections():
    """Per-shell correlation with the exact central slice (the map's transform Σ v(r) e^{−2πi k·r},
    evaluated directly) ≥ 0.99 up to Nyquist, and amplitudes within 5 %."""
    L = 20
    g = torch.Generator().manual_seed(3)
    r = torch.arange(L, dtype=torch.float64) - L // 2
    z, y, x = torch.meshgrid(r, r, r, indexing="ij")
    vol = torch.zeros(L, L, L, dtype=torch.float64)
    for _ in range(12):  # sharp blobs: plenty of power at Nyquist
        c = (torch.rand(3, generator=g, dtype=torch.float64) - 0.5) * L / 2
        vol += torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * 0.8**2))
    rot = random_rotations(3, g).double()
    _, k2 = half_plane_query(L)
    k2 = k2.double()
    got = project_fourier(oversampled_spectrum(vol, 2), rot, k2)
    pos = torch.stack([x, y, z], -1).reshape(-1, 3)
    k3 = k2 @ rot[:, :2, :]  # (B, M, 3)
    exact = torch.exp(-2j * math.pi * (k3 @ pos.T)) @ vol.reshape(-1).to(torch.complex128) / L
    shell = torch.round(k2.norm(dim=1) * L).long()
    for s in range(1, L // 2):
        m = shell == s
        a, b = got[:, m].reshape(-1), exact[:, m].reshape(-1)
        cc = (a * b.conj()).sum().real / (a.abs().norm() * b.abs().norm())
        assert cc >= 0.99, (s, float(cc))
        assert abs(float(a.abs().norm() / b.abs().norm()) - 1) < 0.05, s


@pytest.fixture(scope="module")
def shifted_star(tmp_path_factory) -> Path:
    """A RELION star with origins of several pixels (σ = 3 px) and CTFs, 2,000 particles."""
    d = tmp_path_factory.mktemp("shifted")
    simulate(
        None,
        d,
        SimulationSettings(
            n_particles=2000, snr=None, seed=5, shift_std_angstrom=9.0, defocus_median_angstrom=15000
        ),
    )
    return d


def test_simulate_like_then_reconstruct_reaches_near_nyquist(shifted_star, tmp_path):
    """``simulate --like`` a star with shifts (box 32, 3 Å/px, CTF, no noise), then known-pose
    ``reconstruct``: FSC-0.5 vs the truth at ≤ 2.2 px, the same hand, positive contrast."""
    star = shifted_star / "particles.star"
    runner = CliRunner()
    out = tmp_path / "like"
    r = runner.invoke(
        cli, ["simulate", str(shifted_star / "map.mrc"), "--like", str(star), "--out", str(out), "--snr", "0"]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["reconstruct", str(out / "particles.star"), "--out", str(tmp_path / "rec.mrc")])
    assert r.exit_code == 0, r.output
    rec, _ = read_map(tmp_path / "rec.mrc")
    truth, _ = read_map(shifted_star / "map.mrc")
    f, v = fsc(torch.from_numpy(rec), torch.from_numpy(truth))
    below = np.nonzero(v[1:] < 0.5)[0]
    res_px = 2.0 if len(below) == 0 else 1 / f[1 + below[0]]
    assert res_px <= 2.2
    cc = np.corrcoef(rec.ravel(), truth.ravel())[0, 1]
    # positive: the molecule is white in our stacks, as in RELION's (a flipped contrast gives < 0; the
    # images are formed in a padded box, so what the CTF and the shifts move out of the box is lost)
    assert cc > 0.7


def test_simulated_stacks_show_the_molecule_white(shifted_star):
    """RELION/cryoSPARC contrast: the particle is brighter than the background at low defocus."""
    from cryoforge.io.mrc import open_stack

    imgs = np.asarray(open_stack(shifted_star / "particles.mrcs"))[:200].mean(0)
    L = imgs.shape[-1]
    r = np.hypot(*np.meshgrid(np.arange(L) - L // 2, np.arange(L) - L // 2))
    assert imgs[r < 4].mean() > imgs[r > 12].mean()


def test_map_of_wrong_box_for_like_is_one_line_exit_2(shifted_star, tmp_path):
    write_mrc(tmp_path / "small.mrc", np.zeros((16, 16, 16), np.float32), 3.0)
    r = CliRunner().invoke(
        cli,
        [
            "simulate",
            str(tmp_path / "small.mrc"),
            "--like",
            str(shifted_star / "particles.star"),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert r.exit_code == 2
    assert "16 px" in r.output and "32 px" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_per_particle_optics_six_groups(registry, cryodrgn):
    """relion31.6opticsgroups.star mixes 1.24 and 1.25 Å/px: the CTF and the pixel shifts use each
    particle's own pixel size, as cryoDRGN reads them (``expected/ctf_6og.pkl``, ``pose_6og.pkl``)."""
    from cryoforge.imaging.cryoai import CryoAIImaging
    from cryoforge.io.star import read_star
    from cryoforge.sources.pickles import load_cryodrgn_ctf, load_cryodrgn_poses

    table = read_star(cryodrgn / "relion31.6opticsgroups.star")
    ref = load_cryodrgn_ctf(cryodrgn / "expected" / "ctf_6og.pkl")
    D = int(ref[0, 0])
    assert len(np.unique(ref[:, 1])) > 1  # the file really mixes pixel sizes
    ctf = table.ctf_params()
    assert np.allclose(ctf.pixel_size_angstrom.numpy(), ref[:, 1], atol=1e-6)
    imaging = CryoAIImaging(CryoAIImaging.Options(), BuildContext(D, float(np.median(ref[:, 1]))))
    got = imaging.ctf_values(ctf).double()
    for i in np.unique(ref[:, 1], return_index=True)[1]:
        k = imaging.freqs.double() / ref[i, 1]
        want = ctf_2d(k, *[torch.tensor(ref[i : i + 1, j]) for j in range(2, 9)])[0]
        assert torch.allclose(got[i], want, atol=1e-4)
    _, trans = load_cryodrgn_poses(cryodrgn / "expected" / "pose_6og.pkl", D)
    shift_px = table.pose().shift_angstrom.double().numpy() / ref[:, 1:2]
    assert np.allclose(shift_px, trans, atol=1e-4)  # loader already multiplied by D
    assert (imaging.pixel_sizes(ctf, len(ctf)).reshape(-1).numpy() == ctf.pixel_size_angstrom.numpy()).all()


def test_cryosparc_blob_sign_is_honoured(tiny, tmp_path, registry):
    """``blob/sign = −1`` (dark particles) makes the source invert them; ``+1`` leaves them."""
    arr = np.load(tiny["cs"])
    names = arr.dtype.names
    assert "blob/sign" in names
    stack = Path(tiny["mrcs"]).resolve()
    out = {}
    for sign in (1.0, -1.0):
        a = arr.copy()
        a["blob/sign"] = sign
        a["blob/path"] = str(stack).encode()
        path = tmp_path / f"sign{int(sign)}.cs"
        with open(path, "wb") as fh:
            np.save(fh, a)
        src = registry.build("source", "cs", {"path": str(path), "normalize": False})
        out[sign] = src.read_images(np.arange(4))
    assert np.allclose(out[-1.0], -out[1.0])
