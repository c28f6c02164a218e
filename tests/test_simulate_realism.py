"""Issue 23: ``simulate`` with what real data have (defocus range and astigmatism, B-factor,
coloured noise, contrast scale, junk, chunked writing), each checked against a computation of
its own: spectra by numpy FFTs here, distributions by a Kolmogorov–Smirnov bound."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cryoforge.cli import cli
from cryoforge.io.mrc import open_stack
from cryoforge.io.star import JUNK_COLUMN, read_star, write_star
from cryoforge.simulation.simulate import SimulationSettings, simulate
from cryoforge.testing import assert_one_line_error


def invoke(*a: object):
    return CliRunner().invoke(cli, [str(x) for x in a])


def stack(path: Path) -> np.ndarray:
    return np.asarray(open_stack(path), dtype=np.float64)


def ks_uniform(values: np.ndarray, lo: float, hi: float) -> float:
    """The Kolmogorov–Smirnov distance of ``values`` to the uniform law on [lo, hi]."""
    u = np.sort((np.asarray(values) - lo) / (hi - lo))
    n = len(u)
    return float(max((np.arange(1, n + 1) / n - u).max(), (u - np.arange(n) / n).max()))


def radial_power(images: np.ndarray) -> np.ndarray:
    """Mean |DFT|²/L² of ``images`` in shells ``round(|k|·L)`` up to Nyquist (full FFT, numpy)."""
    L = images.shape[-1]
    power = (np.abs(np.fft.fft2(images)) ** 2).mean(0) / L**2
    k = np.fft.fftfreq(L)
    shell = np.rint(np.hypot(k[:, None], k[None, :]) * L).astype(int)
    inside = shell <= L // 2
    return np.bincount(shell[inside], power[inside]) / np.bincount(shell[inside])


def test_defocus_range_and_astigmatism_are_uniform_and_written_as_relion_does(tmp_path):
    n = 400
    r = invoke(
        "simulate", "--demo", "-n", n, "--snr", 0, "--defocus-range", 10000, 30000,
        "--astigmatism-range", 200, 1000, "--out", tmp_path,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    t = read_star(tmp_path / "particles.star")
    u, v, ang = (t.ctf[k] for k in ("defocus_u_angstrom", "defocus_v_angstrom", "astigmatism_angle_deg"))
    mean, diff = (u + v) / 2, u - v
    bound = 1.63 / np.sqrt(n)  # KS at the 1 % level
    assert mean.min() >= 10000 and mean.max() <= 30000 and ks_uniform(mean, 10000, 30000) < bound
    assert diff.min() >= 200 and diff.max() <= 1000 and ks_uniform(diff, 200, 1000) < bound
    assert ang.min() >= 0 and ang.max() < 180 and ks_uniform(ang, 0, 180) < bound
    text = (tmp_path / "particles.star").read_text()
    assert all(f"_{c} " in text for c in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"))


def test_bfactor_envelope_is_exp_minus_b_s2_over_4(tmp_path):
    """Exact with --wrap (images formed in the box): the ratio of the two runs' DFTs, pixel by
    pixel; approximate with the default padded box and a CTF: the ratio of shell powers."""
    B, px, L = 150.0, 3.0, 32
    k = np.fft.fftfreq(L)
    s2 = (k[:, None] ** 2 + k[None, :] ** 2) / px**2
    for flags in (["--wrap", "--no-ctf"], []):
        runs = {}
        for b in (0, B):
            out = tmp_path / f"b{b}{len(flags)}"
            r = invoke("simulate", "--demo", "-n", 60, "--snr", 0, "--bfactor", b, *flags, "--out", out)
            assert r.exit_code == 0, r.output
            runs[b] = stack(out / "particles.mrcs")
        if flags:
            f0, fb = np.fft.fft2(runs[0]), np.fft.fft2(runs[B])
            strong = np.abs(f0) > 1e-3 * np.abs(f0).max()
            ratio = np.abs(fb)[strong] / np.abs(f0)[strong]
            want = np.broadcast_to(np.exp(-B * s2 / 4), f0.shape)[strong]
            assert np.abs(ratio - want).max() < 1e-3
        else:
            measured = radial_power(runs[B])[1:12] / radial_power(runs[0])[1:12]
            shells = np.arange(1, 12) / (L * px)
            assert np.allclose(measured, np.exp(-B * shells**2 / 2), rtol=0.08)
    meta = json.loads((tmp_path / f"b{B}0" / "simulation.json").read_text())
    assert meta["settings"]["bfactor_angstrom2"] == B
    assert np.all(read_star(tmp_path / f"b{B}0" / "particles.star").ctf["bfactor_angstrom2"] == 0)


def noise_of(tmp_path: Path, *options: object, n: int = 200) -> tuple[np.ndarray, dict]:
    """The noise of a run: its stack less the same run's noise-free stack (same seed)."""
    clean, noisy = tmp_path / "clean", tmp_path / "noisy"
    for out, snr in ((clean, 0), (noisy, 1)):
        r = invoke("simulate", "--demo", "-n", n, "--snr", snr, *options, "--out", out)
        assert r.exit_code == 0, r.output
    meta = json.loads((noisy / "simulation.json").read_text())
    return stack(noisy / "particles.mrcs") - stack(clean / "particles.mrcs"), meta


def test_falloff_noise_has_the_requested_spectrum_and_snr(tmp_path):
    d0, px, L = 15.0, 3.0, 32
    noise, meta = noise_of(tmp_path, "--noise-falloff", d0)
    measured = radial_power(noise)[1:]
    s = np.arange(1, L // 2 + 1) / (L * px)
    want = 1 / (1 + (s * d0) ** 2)
    ratio = measured / want
    assert np.abs(ratio / np.median(ratio) - 1).max() < 0.12  # ≥ 1200 samples a shell
    assert measured[0] / measured[-1] > 5  # coloured indeed
    assert meta["realised_snr"] == pytest.approx(1.0, rel=0.03)
    assert meta["noise_spectrum"]["source"].startswith("1/(1+(s·15")


def betagal_background_power(star: Path, radius_px: float) -> tuple[np.ndarray, np.ndarray]:
    """The radial power of the betagal particles' background, measured here: (s in 1/Å, power)."""
    root = star.parents[2]
    names = [w for ln in star.read_text().splitlines() for w in ln.split() if "@Extract/" in w]
    images = []
    for name in names:
        i, file = name.split("@")
        with mrcfile.mmap(root / file, mode="r", permissive=True) as m:
            images.append(np.asarray(m.data[int(i) - 1], dtype=np.float64))
    images = np.stack(images)
    L = images.shape[-1]
    r = np.arange(L) - L // 2
    outside = np.hypot(r[:, None], r[None, :]) > radius_px
    bg = images * outside
    bg -= outside * bg.sum((1, 2), keepdims=True) / outside.sum()
    power = radial_power(bg) / outside.mean()
    return np.arange(len(power)) / (L * 3.54), power


def test_noise_like_real_particles_transfers_their_spectrum_to_another_pixel_size(tmp_path, shared_data):
    star = shared_data / "real" / "betagal" / "Extract" / "job009" / "particles.star"
    s_src, p_src = betagal_background_power(star, 24.0)  # 0.375 × 64 px, the default mask
    noise, meta = noise_of(tmp_path, "--noise-like", star)  # demo: 3 Å/px, Nyquist beyond the source's
    measured = radial_power(noise)[1:]
    s = np.arange(1, 17) / (32 * 3.0)
    want = np.interp(s, s_src[1:], p_src[1:])  # held at its last value beyond 1/7.08 Å⁻¹
    ratio = measured / want
    assert np.abs(ratio / np.median(ratio) - 1).max() < 0.12
    assert s[-1] > s_src[-1] and measured[-1] / measured[0] < 0.5  # beyond the source: held low
    assert meta["realised_snr"] == pytest.approx(1.0, rel=0.03)
    assert "84.96 Å" in meta["noise_spectrum"]["source"]  # the mask radius, in Å


def test_contrast_scale_is_lognormal_and_recorded(tmp_path):
    n = 300
    for out, extra in (("plain", []), ("scaled", ["--contrast-std", 0.3])):
        r = invoke("simulate", "--demo", "-n", n, "--snr", 0, *extra, "--out", tmp_path / out)
        assert r.exit_code == 0, r.output
    a, b = stack(tmp_path / "plain/particles.mrcs"), stack(tmp_path / "scaled/particles.mrcs")
    fitted = (a * b).sum((1, 2)) / (a * a).sum((1, 2))
    t = read_star(tmp_path / "scaled/particles.star")
    scale = np.asarray(t.extra["cryoforgeContrastScale"], dtype=np.float64)
    assert np.allclose(fitted, scale, rtol=1e-4)
    assert np.std(np.log(scale)) == pytest.approx(0.3, rel=0.15)
    assert np.median(scale) == pytest.approx(1.0, abs=0.06)


def test_junk_fraction_flags_and_content(tmp_path, shared_data):
    n = 100
    r = invoke("simulate", "--demo", "-n", n, "--snr", 0, "--out", tmp_path / "plain")
    assert r.exit_code == 0, r.output
    model = shared_data / "structures" / "adk_closed.pdb"
    r = invoke(
        "simulate", "--demo", "-n", n, "--snr", 0, "--junk-fraction", 0.3, "--junk-model", model,
        "--out", tmp_path / "junk",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    t = read_star(tmp_path / "junk/particles.star")
    flags = np.asarray(t.extra[JUNK_COLUMN]).astype(int)
    assert flags.sum() == 30 and set(flags) == {0, 1}
    assert "_cryoforgeJunk " in (tmp_path / "junk/particles.star").read_text()
    plain, junk = stack(tmp_path / "plain/particles.mrcs"), stack(tmp_path / "junk/particles.mrcs")
    good = flags == 0
    assert np.allclose(junk[good], plain[good], atol=1e-5 * np.abs(plain).max())
    empty = np.abs(junk).max((1, 2)) == 0
    assert empty.sum() == 15 and not empty[good].any()  # half the junk is pure noise
    other = ~good & ~empty  # the other molecule, at the same poses: not the map's projections
    cc = [np.corrcoef(junk[i].ravel(), plain[i].ravel())[0, 1] for i in np.flatnonzero(other)]
    assert other.sum() == 15 and np.median(cc) < 0.9
    meta = json.loads((tmp_path / "junk/simulation.json").read_text())
    assert meta["junk"] == {"n_noise": 15, "n_molecule": 15, "model": str(model)}


def test_snr_is_the_true_particles_and_junk_noise_is_noise(tmp_path):
    res = simulate(None, tmp_path, SimulationSettings(n_particles=200, seed=4, junk_fraction=0.5))
    assert res.realised_snr == pytest.approx(1.0, rel=0.03)
    default_blob = json.loads((tmp_path / "simulation.json").read_text())["junk"]["model"]
    assert default_blob == "random blob"


def test_evaluate_leaves_junk_out_of_pose_errors(tmp_path):
    """Predicted poses right for the true particles, random for the junk: with the flags the
    errors are zero and the junk is counted out; without them the junk ruins the median."""
    from cryoforge.ops.rotations import random_rotations

    settings = SimulationSettings(n_particles=80, snr=None, seed=5, junk_fraction=0.6)
    res = simulate(None, tmp_path / "sim", settings)
    truth = read_star(res.star)
    junk = np.asarray(truth.extra[JUNK_COLUMN]).astype(int) == 1
    wrong = random_rotations(int(junk.sum()), torch.Generator().manual_seed(1)).double().numpy()
    pred, plain = read_star(res.star), read_star(res.star)
    pred.rotations = pred.rotations.copy()
    pred.rotations[junk] = wrong
    for t, name in ((pred, "pred.star"), (plain, "plain.star")):  # no junk column in these
        t.extra, t.path = {}, tmp_path / name
        write_star(t.path, t)
    got, printed = {}, {}
    for name, gt in (("flagged", res.star), ("none", plain.path)):
        r = invoke("evaluate", res.map, "--poses", pred.path, "--gt-poses", gt, "--out", tmp_path / name)
        assert r.exit_code == 0, r.output
        got[name], printed[name] = json.loads((tmp_path / name / "metrics.json").read_text()), r.output
    assert got["flagged"]["n_junk_excluded"] == 48 and got["flagged"]["rot_median_deg"] < 1e-3
    assert "n_junk_excluded" in printed["flagged"]
    assert "n_junk_excluded" not in got["none"] and got["none"]["rot_median_deg"] > 10


def test_a_run_on_flagged_data_scores_the_true_particles_only(tmp_path):
    """The evaluation during ``cryoforge run`` (metrics.json) reads the junk flags too."""
    from cryoforge.engine.run import run
    from tests.test_abinit import config_for

    res = simulate(
        None, tmp_path / "sim", SimulationSettings(n_particles=80, snr=None, seed=5, junk_fraction=0.5)
    )
    search = {"iterations": 1, "refine_steps_deg": [], "directions": 12, "inplane": 4}
    over = {"schedule.search": search, "schedule.fit_steps": 1, "schedule.amortize_steps": 0}
    run(config_for(res.star, tmp_path / "run", **over))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n_junk_excluded"] == 40


def test_large_datasets_are_written_in_chunks_equal_to_the_whole(tmp_path, monkeypatch):
    import cryoforge.simulation.simulate as sim

    seen: list[int] = []
    original = sim.simulate_images

    def spy(volume, rotations, *a, **kw):
        seen.append(len(rotations))
        return original(volume, rotations, *a, **kw)

    settings = dict(
        n_particles=150, seed=6, shift_std_angstrom=2.0, noise_falloff_angstrom=20.0, junk_fraction=0.1
    )
    whole = simulate(None, tmp_path / "whole", SimulationSettings(**settings))
    monkeypatch.setattr(sim, "simulate_images", spy)
    chunked = simulate(None, tmp_path / "chunked", SimulationSettings(**settings, chunk_images=32))
    n_noise = json.loads((tmp_path / "chunked/simulation.json").read_text())["junk"]["n_noise"]
    assert max(seen) <= 32 and sum(seen) == 150 - n_noise  # pure-noise junk is not projected
    a, b = stack(whole.stack), stack(chunked.stack)
    assert np.abs(a - b).max() < 1e-5 * np.abs(a).max()  # the same noise; the SNR's sums differ by rounding
    assert chunked.realised_snr == pytest.approx(whole.realised_snr, rel=1e-9)
    assert json.loads((tmp_path / "chunked/simulation.json").read_text())["chunks"] == 5
    import io

    assert mrcfile.validate(str(chunked.stack), print_file=io.StringIO())
    with mrcfile.open(chunked.stack, header_only=True) as m, mrcfile.open(whole.stack, header_only=True) as w:
        assert m.header.ispg == w.header.ispg == 0 and m.voxel_size.x == pytest.approx(3.0)
        for f in ("dmin", "dmax", "dmean", "rms"):
            assert float(m.header[f]) == pytest.approx(float(w.header[f]), rel=1e-5, abs=1e-6)
    assert sorted(p.name for p in (tmp_path / "chunked").iterdir()) == sorted(sim.OUTPUT_NAMES)


def test_stack_writer_leaves_nothing_on_error(tmp_path):
    from cryoforge.io.mrc_stream import StackWriter

    with pytest.raises(RuntimeError), StackWriter(tmp_path / "s.mrcs", 4, 8, 1.5) as w:
        w.write(0, np.ones((2, 8, 8)))
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (["--defocus-range", 0, 100], "--defocus-range"),
        (["--defocus-range", 30000, 10000], "MIN ≤ MAX"),
        (["--defocus-range", 1e8, 2e8], "1 mm"),
        (["--defocus", 15000, "--defocus-range", 1e4, 2e4], "not both"),
        (["--astigmatism-range", -1, 5], "--astigmatism-range"),
        (["--defocus-range", 1000, 2000, "--astigmatism-range", 0, 3000], "DefocusV"),
        (["--bfactor", -5], "--bfactor"),
        (["--bfactor", "nan"], "finite"),
        (["--contrast-std", -0.1], "--contrast-std"),
        (["--junk-fraction", 1], "--junk-fraction"),
        (["--junk-fraction", 0.1, "--junk-model", "missing.pdb"], "--junk-model"),
        (["--noise-falloff", 0], "--noise-falloff"),
        (["--noise-falloff", 10, "--noise-like", "x.star"], "not both"),
        (["--noise-mask-radius", 50], "needs --noise-like"),
        (["--noise-like", "missing.star"], "--noise-like"),
    ],
)
def test_bad_realism_options_are_one_line_errors(tmp_path, options, needle):
    r = invoke("simulate", "--demo", "-n", 10, *options, "--out", tmp_path / "sim")
    assert_one_line_error(r, needle)
    assert not (tmp_path / "sim").exists()


def test_float16_stack_is_mode_12_and_holds_the_float32_images_rounded(tmp_path):
    """--float16 writes MRC mode 12 in chunks (as RELION 4+ can): mrcfile reads the same images as
    the float32 simulation with the same seed, to float16's precision."""
    common = {"n_particles": 200, "snr": 1.0, "seed": 4, "chunk_images": 64, "shift_std_angstrom": 3.0}
    simulate(None, tmp_path / "f32", SimulationSettings(**common))
    simulate(None, tmp_path / "f16", SimulationSettings(**common, float16=True))
    with mrcfile.open(tmp_path / "f16" / "particles.mrcs", permissive=True) as m16:
        assert int(m16.header.mode) == 12 and m16.data.dtype == np.float16
        half = np.asarray(m16.data, dtype=np.float32)
        assert m16.header.dmax == pytest.approx(float(half.max()), rel=1e-3)
    with mrcfile.open(tmp_path / "f32" / "particles.mrcs", permissive=True) as m32:
        full = np.asarray(m32.data)
    assert half.shape == full.shape == (200, 32, 32)
    scale = float(np.abs(full).max())
    assert float(np.abs(half - full).max()) <= 2e-3 * scale
    assert (tmp_path / "f16" / "particles.mrcs").stat().st_size < 0.55 * (
        tmp_path / "f32" / "particles.mrcs"
    ).stat().st_size


def test_a_chunked_simulation_shows_particles_done_on_stderr(tmp_path, capsys):
    """A stack written in chunks reports its progress, clean images then noise, as plain lines
    when stderr is not a terminal (a scheduler's log)."""
    settings = SimulationSettings(n_particles=96, snr=1.0, seed=1, chunk_images=32)
    simulate(None, tmp_path / "sim", settings, progress=True)
    err = capsys.readouterr().err
    assert "simulate: clean images: particles 96/96 (100.0 %)" in err
    assert "simulate: noise: particles 96/96 (100.0 %)" in err
    simulate(None, tmp_path / "quiet", settings)
    assert "particles" not in capsys.readouterr().err
