"""The CTF check: a defocus fitted from the particles' Thon rings, against known defoci.

Images are made here from white random spectra times the CTF of :func:`cryoforge.ops.ctf.ctf_2d`
(checked against RELION's and cryoDRGN's files in ``test_conventions_real_data.py``), so the
rings are at a known defocus whatever the metadata say. The real β-galactosidase particles,
whose CTFFIND job ran at 1.40 Å/px on 0.885 Å/px micrographs (its logs say so), are the case it
was built for.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cryoforge.cli import cli
from cryoforge.engine.ctf_check import check_particle_ctf, corrected_defocus_factors, ctf_warning
from cryoforge.imaging.thon import (
    SHELLS_PER_RING,
    ctf_squared_radial,
    fit_defocus_scale,
    radial_power,
    resolved_shells,
)
from cryoforge.io.star import read_star
from cryoforge.ops.ctf import ctf_2d
from cryoforge.testing import assert_one_line_error

L, PX, KV, CS, W = 128, 1.5, 300.0, 2.7, 0.1


def _images(n: int, defocus: float, seed: int = 0, snr: float = 1.0) -> np.ndarray:
    """``n`` images: a white random specimen spectrum × the CTF at ``defocus`` Å, plus noise."""
    g = np.random.default_rng(seed)
    f = np.fft.fftfreq(L) / PX
    ky, kx = np.meshgrid(f, f, indexing="ij")
    freqs = torch.from_numpy(np.stack([kx.ravel(), ky.ravel()], -1))
    t = lambda v: torch.full((1,), float(v), dtype=torch.float64)
    ctf = ctf_2d(freqs, t(defocus), t(defocus), t(0), t(KV), t(CS), t(W), t(0)).numpy().reshape(L, L)
    spec = np.fft.fft2(g.normal(size=(n, L, L))) * ctf
    signal = np.fft.ifft2(spec).real
    noise = g.normal(size=signal.shape) * signal.std() / math.sqrt(snr)
    return signal + noise


def test_ctf_squared_radial_is_the_ctf_along_one_direction():
    s = np.linspace(0, 1 / (2 * PX), 40)
    ours = ctf_squared_radial(s, np.array([12000.0, 30000.0]), KV, CS, W)
    freqs = torch.from_numpy(np.stack([s, np.zeros_like(s)], -1))
    for row, df in zip(ours, (12000.0, 30000.0), strict=True):
        t = lambda v: torch.tensor([float(v)], dtype=torch.float64)
        ref = ctf_2d(freqs, t(df), t(df), t(0), t(KV), t(CS), t(W), t(0)).numpy()[0] ** 2
        np.testing.assert_allclose(row, ref, atol=1e-12)


def test_resolved_shells_keep_rings_at_least_the_stated_spacing_apart():
    """Between the CTF zeros inside the shells said to resolve them, there are ≥ 2.5 shells."""
    for df in (5000.0, 15000.0, 40000.0):
        hi = resolved_shells(L, PX, df, KV)
        s = np.linspace(0, 2 * hi / (L * PX), 40001)
        c = ctf_squared_radial(s, np.array([df]), KV, 0.0, 0.0)[0]  # zeros of sin χ (no Cs)
        zeros = s[1:-1][(c[1:-1] < c[:-2]) & (c[1:-1] < c[2:])] * L * PX  # in shells
        gaps = np.diff(zeros)
        inside = zeros[1:] <= hi + 1
        assert np.all(gaps[inside] >= SHELLS_PER_RING * 0.95)
        if hi < L // 2:  # the limit is where the rings get that close, not far before it
            assert np.any(gaps[zeros[1:] <= hi + 2 * SHELLS_PER_RING] < SHELLS_PER_RING * 1.1)
            assert np.all(gaps[zeros[:-1] > hi + 1] < SHELLS_PER_RING)


@pytest.mark.parametrize("stated_over_true", [1.0, 2.5, 0.5])
def test_fit_finds_the_rings_defocus_whatever_the_metadata_say(stated_over_true):
    true = 15000.0
    power = radial_power(_images(200, true))
    fit = fit_defocus_scale(power, L, PX, np.full(200, true * stated_over_true), KV, CS, W)
    assert fit.detected
    assert fit.best_scale * stated_over_true == pytest.approx(1.0, rel=0.03)


def test_pure_noise_shows_no_rings():
    noise = np.random.default_rng(5).normal(size=(200, L, L))
    for seed in range(3):
        fit = fit_defocus_scale(radial_power(noise), L, PX, np.full(200, 15000.0), KV, CS, W, seed=seed)
        assert not fit.detected


def _write_particles(folder: Path, stated: dict[str, float], true: dict[str, float], n: int = 60) -> Path:
    """A RELION 3.1 star + one stack per micrograph: rings at ``true``, metadata at ``stated``."""
    from cryoforge.io.mrc import write_mrc

    rows = []
    for m, name in enumerate(stated):
        stack = folder / f"mic{m}.mrcs"
        write_mrc(stack, _images(n, true[name], seed=m).astype(np.float32), PX, stack=True)
        for i in range(n):
            d = stated[name]
            rows.append(f"{i + 1:06d}@{stack.name} {name} {d + 50:.2f} {d - 50:.2f} 30.0 1")
    star = folder / "particles.star"
    star.write_text(
        "data_optics\nloop_\n_rlnOpticsGroup #1\n_rlnVoltage #2\n_rlnSphericalAberration #3\n"
        "_rlnAmplitudeContrast #4\n_rlnImagePixelSize #5\n_rlnImageSize #6\n_rlnImageDimensionality #7\n"
        f"1 {KV} {CS} {W} {PX} {L} 2\n\n"
        "data_particles\nloop_\n_rlnImageName #1\n_rlnMicrographName #2\n_rlnDefocusU #3\n"
        "_rlnDefocusV #4\n_rlnDefocusAngle #5\n_rlnOpticsGroup #6\n" + "\n".join(rows) + "\n"
    )
    return star


def test_check_groups_by_micrograph_and_corrects_only_the_wrong_ones(tmp_path, registry):
    stated = {"a.mrc": 12000.0, "b.mrc": 40000.0}
    true = {"a.mrc": 12000.0, "b.mrc": 16000.0}
    star = _write_particles(tmp_path, stated, true)
    source = registry.build("source", "star", {"path": str(star), "normalize": False})
    check = check_particle_ctf(source)
    verdicts = {g.name: g.verdict for g in check.groups}
    assert verdicts == {"a.mrc": "agrees", "b.mrc": "disagrees"}
    b = next(g for g in check.groups if g.name == "b.mrc")
    assert b.fitted_defocus_angstrom == pytest.approx(16000.0, rel=0.03)
    f = corrected_defocus_factors(check, len(source))
    assert np.all(f[:60] == 1.0) and np.allclose(f[60:], b.fit.best_scale)
    assert not check.disagrees  # one of two: not most
    assert ctf_warning(source) is None


def test_cli_reports_and_writes_the_fitted_defocus(tmp_path):
    stated = {"a.mrc": 40000.0, "b.mrc": 45000.0}
    true = {"a.mrc": 14000.0, "b.mrc": 18000.0}
    star = _write_particles(tmp_path, stated, true)
    out = tmp_path / "fixed.star"
    args = ["ctf-check", str(star), "--out", str(out), "--plot", str(tmp_path / "c.png")]
    res = CliRunner().invoke(cli, [*args, "--json", str(tmp_path / "c.json")])
    assert res.exit_code == 0, res.output
    assert "disagrees with the particles' Thon rings in 2 of 2" in res.output
    assert (tmp_path / "c.png").stat().st_size > 1000
    before, after = read_star(star), read_star(out)
    ratio = after.ctf["defocus_u_angstrom"] / before.ctf["defocus_u_angstrom"]
    np.testing.assert_allclose(ratio[:60], 14000 / 40000, rtol=0.03)
    np.testing.assert_allclose(ratio[60:], 18000 / 45000, rtol=0.03)
    ratio_v = after.ctf["defocus_v_angstrom"] / before.ctf["defocus_v_angstrom"]
    np.testing.assert_allclose(ratio_v, ratio, rtol=1e-5)  # U and V scaled alike
    np.testing.assert_array_equal(after.ctf["astigmatism_angle_deg"], before.ctf["astigmatism_angle_deg"])
    assert list(after.image_names) == list(before.image_names)
    # the run warns before training on the uncorrected file, not on the corrected one
    res = CliRunner().invoke(cli, ["run", "--particles", str(star), "-d", str(tmp_path / "r"), "--dry-run"])
    assert "disagrees with the particles' Thon rings" in res.output
    res = CliRunner().invoke(cli, ["run", "--particles", str(out), "-d", str(tmp_path / "r2"), "--dry-run"])
    assert res.exit_code == 0 and "Thon rings" not in res.output
    # an existing --out is kept without --overwrite; one line, exit 2, the file untouched
    written = out.read_bytes()
    again = CliRunner().invoke(cli, args)
    assert_one_line_error(again, "--out")
    assert out.read_bytes() == written


def test_cli_errors_are_one_line(tmp_path):
    stated = {"a.mrc": 40000.0}
    star = _write_particles(tmp_path, stated, {"a.mrc": 14000.0}, n=30)
    res = CliRunner().invoke(cli, ["ctf-check", str(tmp_path / "missing.star")])
    assert_one_line_error(res, "missing.star")
    res = CliRunner().invoke(cli, ["ctf-check", str(tmp_path / "mic0.mrcs")])
    assert_one_line_error(res, "mic0.mrcs")
    before = star.read_bytes()
    res = CliRunner().invoke(cli, ["ctf-check", str(star), "--out", str(star)])
    assert_one_line_error(res, "--out")
    assert star.read_bytes() == before


def test_betagal_defocus_is_contradicted_by_its_rings(shared_data):
    """CTFFIND ran at 1.40 Å/px on 0.885 Å/px micrographs: the star's 3.4–5 µm are not the rings'."""
    d = shared_data / "real" / "betagal"
    star = d / "Extract/job009/particles.star"
    if not star.is_file():
        pytest.skip(f"real β-galactosidase particles not found at {d}")
    res = CliRunner().invoke(
        cli, ["ctf-check", str(star), "--datadir", str(d), "--max-per-micrograph", "150"]
    )
    assert res.exit_code == 0, res.output
    assert "disagrees with the particles' Thon rings in 10 of 10" in res.output
    from cryoforge.plugins import load_registry

    source = load_registry().build(
        "source", "star", {"path": str(star), "datadir": str(d), "normalize": False}
    )
    check = check_particle_ctf(source, max_per_group=150)
    for g in check.groups:
        assert 3.4e4 < g.defocus_angstrom < 5.0e4
        assert 0.6e4 < g.fitted_defocus_angstrom < 1.5e4
        assert g.fit.best_correlation > 0.7
