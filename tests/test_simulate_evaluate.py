"""Simulation, known-pose reconstruction, FSC and alignment — against independent references."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cryoforge.cli import cli
from cryoforge.io.mrc import open_stack, read_map
from cryoforge.io.star import read_star
from cryoforge.metrics.alignment import align_map
from cryoforge.metrics.fsc import fsc, resolution_at
from cryoforge.metrics.resample import mirror_z, rotate_map
from cryoforge.ops.projection import backproject
from cryoforge.ops.rotations import random_rotations
from cryoforge.simulation.simulate import SimulationSettings, simulate


def test_fsc_identity_and_noise():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 16, 16, generator=g)
    f, v = fsc(a, a)
    assert np.allclose(v, 1) and f[-1] == pytest.approx(0.5)
    b = torch.randn(16, 16, 16, generator=g)
    _, v = fsc(a, b)
    assert np.abs(v[2:]).max() < 0.35  # independent noise: FSC near 0


def test_resolution_crossing_is_interpolated():
    freqs = np.array([0, 0.1, 0.2, 0.3])
    vals = np.array([1.0, 0.9, 0.3, 0.1])
    assert resolution_at(freqs, vals, 0.5) == pytest.approx(0.1 + 0.4 / 0.6 * 0.1)
    assert resolution_at(freqs, np.ones(4), 0.5) == 0.3


def test_align_map_recovers_rotation_hand_and_shift():
    L = 20
    r = torch.arange(L) - L // 2
    z, y, x = torch.meshgrid(r, r, r, indexing="ij")
    ref = torch.zeros(L, L, L)
    # four non-coplanar blobs of different sizes and weights: a chiral object
    for c, s, a in (
        ((4, 0, 0), 2.0, 1.0),
        ((-3, 3, 0), 1.5, 0.7),
        ((0, -3, 0), 1.8, 0.5),
        ((0, 0, 4), 1.2, 1.3),
    ):
        ref += a * torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s * s))
    A = random_rotations(1, torch.Generator().manual_seed(4))[0]
    moved = torch.roll(mirror_z(rotate_map(ref, A.T)), (1, -2, 0), (0, 1, 2))
    al = align_map(moved, ref, n_search=400)
    assert al.mirrored
    _, v = fsc(al.aligned, ref)
    assert v[: L // 4].min() > 0.8


def test_simulation_snr_and_metadata(tmp_path):
    res = simulate(
        None, tmp_path, SimulationSettings(n_particles=200, snr=0.5, seed=1, shift_std_angstrom=3.0)
    )
    meta = json.loads((tmp_path / "simulation.json").read_text())
    assert meta["realised_snr"] == pytest.approx(0.5, rel=0.02)
    t = read_star(res.star)
    assert len(t) == 200 and t.rotations.shape == (200, 3, 3) and t.box_size == 32
    assert t.pixel_size_angstrom == pytest.approx(3.0)
    assert np.std(t.shifts_angstrom) == pytest.approx(3.0, rel=0.15)
    assert np.median((t.ctf["defocus_u_angstrom"] + t.ctf["defocus_v_angstrom"]) / 2) == pytest.approx(
        2e4, rel=0.1
    )
    assert open_stack(res.stack).shape == (200, 32, 32)
    _, voxel = read_map(res.map)
    assert voxel == pytest.approx(3.0)


def test_atomic_model_potential_is_centred(shared_data):
    from cryoforge.simulation.potential import atomic_model_to_map

    vol = atomic_model_to_map(shared_data / "structures" / "adk_open.pdb", 48, 2.0)
    r = np.arange(48) - 24
    z, y, x = np.meshgrid(r, r, r, indexing="ij")
    com = [(vol * c).sum() / vol.sum() for c in (x, y, z)]
    assert np.abs(com).max() < 2.0  # centre of mass near the box centre (in px)
    assert vol.min() > -1e-3 and vol.max() > 0


def test_known_pose_reconstruction_of_simulated_data_same_hand(tmp_path):
    """Simulate in real space with CTF and shifts; backproject in Fourier space with the same poses."""
    res = simulate(
        None, tmp_path, SimulationSettings(n_particles=800, snr=None, seed=2, shift_std_angstrom=3.0)
    )
    r = CliRunner().invoke(
        cli, ["reconstruct", str(res.star), "--out", str(tmp_path / "rec.mrc")], catch_exceptions=False
    )
    assert r.exit_code == 0, r.output
    rec, _ = read_map(tmp_path / "rec.mrc")
    gt, _ = read_map(res.map)
    _, v = fsc(torch.from_numpy(rec), torch.from_numpy(gt))
    _, vm = fsc(mirror_z(torch.from_numpy(rec)), torch.from_numpy(gt))
    assert v[1:8].mean() > 0.9  # to 4 px resolution
    assert v[1:8].mean() > vm[1:8].mean() + 0.2  # and the right hand


def test_toy_projections_reconstruct_with_cryodrgn_poses(cryodrgn):
    """cryoDRGN's toy projections with toy_rot_trans.pkl rotations reconstruct the toy volume."""
    from cryoforge.sources.pickles import load_cryodrgn_poses

    imgs = torch.tensor(np.asarray(open_stack(cryodrgn / "toy_projections.mrcs")))
    vol, _ = read_map(cryodrgn / "toymodel_small_nocenter.mrc")
    rot, _ = load_cryodrgn_poses(cryodrgn / "toy_rot_trans.pkl", 30)
    rec = backproject(imgs, torch.tensor(rot).float())
    _, v = fsc(rec, torch.from_numpy(vol))
    _, vm = fsc(mirror_z(rec), torch.from_numpy(vol))
    assert v[1:8].mean() > 0.95 and vm[1:8].mean() < 0.5


def test_evaluate_cli_writes_plot_and_json(tmp_path):
    res = simulate(None, tmp_path / "sim", SimulationSettings(n_particles=50, snr=None, seed=3))
    out = tmp_path / "ev"
    r = CliRunner().invoke(
        cli,
        [
            "evaluate",
            str(res.map),
            "--ref",
            str(res.map),
            "--poses",
            str(res.star),
            "--gt-poses",
            str(res.star),
            "--out",
            str(out),
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["rot_median_deg"] < 1e-3 and m["resolution_0.5_px"] == pytest.approx(2.0)
    assert (out / "fsc.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_half_maps_with_the_automatic_mask(tmp_path):
    """``evaluate --half2 --mask auto``: the masked, corrected FSC of two noisy copies of a map is
    finer than their unmasked FSC (the solvent's noise is masked out), both are reported."""
    from cryoforge.io.mrc import read_map, write_mrc

    res = simulate(None, tmp_path / "sim", SimulationSettings(n_particles=10, snr=None, seed=3))
    vol, px = read_map(res.map)
    rng = np.random.default_rng(0)
    noise = 3.0 * float(vol.std())
    for i in (1, 2):
        noisy = vol + noise * rng.standard_normal(vol.shape)
        write_mrc(tmp_path / f"h{i}.mrc", noisy.astype(np.float32), px)
    out = tmp_path / "ev"
    args = ["evaluate", str(tmp_path / "h1.mrc"), "--half2", str(tmp_path / "h2.mrc"), "--mask", "auto"]
    r = CliRunner().invoke(cli, [*args, "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["halfmap_mask"].startswith("automatic") and 0 < m["halfmap_mask_fraction"] < 0.6
    assert m["halfmap_resolution_0.143_px"] < m["halfmap_unmasked_resolution_0.143_px"]
