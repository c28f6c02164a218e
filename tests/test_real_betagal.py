"""Real RELION particles (β-galactosidase, ``../shared/data/real/betagal``): reading, CTF, selection, a run.

The images and metadata are checked against readers cryoforge does not use for them (``mrcfile``'s
data reading, ``starfile``) and the CTF against the textbook formula written here in numpy. Skipped
when the data are absent.
"""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import torch
from click.testing import CliRunner

from cryoforge.cli import cli
from cryoforge.io.mrc import read_map
from cryoforge.io.star import read_star
from cryoforge.io.star_document import read_star_document, write_star_document
from cryoforge.sources.subsets import select_particles
from cryoforge.testing import assert_one_line_error
from cryoforge.types import BuildContext

ROOT = Path(__file__).resolve().parents[1]
GOOD = (26, 28, 50, 38, 47, 22)
N_PARTICLES, N_GOOD = 2374, 1455
PARTICLES = "Extract/job009/particles.star"
CLASS2D = "Class2D/job010/run_it025_data.star"


@pytest.fixture(scope="module")
def betagal(shared_data: Path) -> Path:
    d = shared_data / "real" / "betagal"
    if not (d / PARTICLES).is_file():
        pytest.skip(f"real β-galactosidase particles not found at {d}")
    return d


@pytest.fixture(scope="module")
def source(betagal: Path, registry):
    """The particle file through cryoforge's reader, images as stored (no normalisation)."""
    opts = {"path": str(betagal / PARTICLES), "datadir": str(betagal), "normalize": False}
    return registry.build("source", "star", opts)


def _sample() -> np.ndarray:
    """32 particles spread over the whole set (every stack file)."""
    return np.linspace(0, N_PARTICLES - 1, 32).round().astype(np.int64)


def _particles_table(betagal: Path):
    """``(optics, particles)`` as ``starfile`` reads them (not cryoforge's reader)."""
    blocks = starfile.read(betagal / PARTICLES, always_dict=True)
    return blocks["optics"], blocks["particles"]


def test_float16_images_equal_mrcfiles_reading(betagal, source):
    """32 images through cryoforge (memory-mapped float16, MRC mode 12) equal ``mrcfile``'s data."""
    idx = _sample()
    ours = source.read_images(idx)
    _, parts = _particles_table(betagal)
    assert len(source) == len(parts) == N_PARTICLES
    assert source.image_size == 64 and source.pixel_size_angstrom == pytest.approx(3.54)
    for k, i in enumerate(idx):
        number, stack = parts["rlnImageName"].iloc[i].split("@", 1)
        with mrcfile.open(betagal / stack, permissive=True) as mrc:
            assert mrc.header.mode == 12 and mrc.data.dtype == np.float16
            ref = np.asarray(mrc.data[int(number) - 1], dtype=np.float32)
        np.testing.assert_array_equal(ours[k], ref)
    assert np.abs(ours).max() > 0.5  # real images, not zeros


def _relativistic_wavelength_angstrom(kv: float) -> float:
    """λ = h / sqrt(2 m₀ e V (1 + e V / (2 m₀ c²))) from the SI constants (CODATA 2018), in Å."""
    volts = kv * 1e3
    h, m0, e, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
    return h / math.sqrt(2 * m0 * e * volts * (1 + e * volts / (2 * m0 * c * c))) * 1e10


def _relion_ctf(kx, ky, px, du, dv, angle_deg, kv, cs_mm, w):
    """The CTF written independently in RELION's form (``ctf.h``): ``CTF = −sin γ`` with
    ``γ = K1·(−Δf)·s² + K2·s⁴ − K5 − K3``, K1 = πλ, K2 = (π/2)·Cs·λ³, K3 = atan(w/√(1−w²)),
    K5 = phase shift (0); Δf along the frequency's angle θ from x,
    ``Δf = (dU + dV)/2 + (dU − dV)/2 · cos(2(θ − θ_ast))``; λ as RELION computes it,
    ``12.2643247 / sqrt(V (1 + 0.978466e-6 V))`` Å (V in volts)."""
    volts = kv * 1e3
    lam = 12.2643247 / math.sqrt(volts * (1 + 0.978466e-6 * volts))
    sx, sy = kx / px, ky / px  # Å⁻¹
    s2 = sx * sx + sy * sy
    theta = np.arctan2(sy, sx)
    defocus = 0.5 * (du + dv) + 0.5 * (du - dv) * np.cos(2 * (theta - np.deg2rad(angle_deg)))
    k1, k2 = math.pi * lam, 0.5 * math.pi * cs_mm * 1e7 * lam**3
    k3 = math.atan(w / math.sqrt(1 - w * w))
    gamma = k1 * (-defocus) * s2 + k2 * s2 * s2 - k3
    return -np.sin(gamma), lam


def test_ctf_equals_the_textbook_formula(betagal, source, registry):
    """cryoforge's CTF for 32 particles (the rendering path's frequencies) equals RELION's formula
    computed here in numpy from the star's DefocusU/V/Angle, 200 kV, Cs 1.4 mm, w = 0.1, 3.54 Å/px."""
    optics, parts = _particles_table(betagal)
    assert float(optics["rlnVoltage"].iloc[0]) == 200.0
    assert float(optics["rlnSphericalAberration"].iloc[0]) == 1.4
    assert float(optics["rlnAmplitudeContrast"].iloc[0]) == 0.1
    px = float(optics["rlnImagePixelSize"].iloc[0])
    assert px == 3.54
    idx = _sample()
    imaging = registry.build("imaging", "cryoai", {}, BuildContext(64, source.pixel_size_angstrom))
    ours = imaging.ctf_values(source.ctf.index(torch.as_tensor(idx))).double().numpy()
    freqs = imaging.freqs.double().numpy()
    kx, ky = freqs[:, 0], freqs[:, 1]  # cycles/px, x = column
    for k, i in enumerate(idx):
        row = parts.iloc[i]
        ref, lam = _relion_ctf(
            kx, ky, px, row["rlnDefocusU"], row["rlnDefocusV"], row["rlnDefocusAngle"], 200.0, 1.4, 0.1
        )
        np.testing.assert_allclose(ours[k], ref, atol=5e-5)  # float32 evaluation
    # RELION's wavelength constants agree with the SI constants to 6e-6 (0.02507949 vs 0.02507934 Å at
    # 200 kV); that much moves the phase by 3.5e-4 rad at Nyquist at these defoci (3.5-5 µm)
    assert lam == pytest.approx(_relativistic_wavelength_angstrom(200.0), rel=1e-5)
    dc = np.nonzero((kx == 0) & (ky == 0))[0]
    assert np.allclose(ours[:, dc], 0.1, atol=1e-6)  # CTF(0) = +w: RELION's sign
    # astigmatic data: along the astigmatism angle the defocus is dU, across it dV (differ by ~1 %)
    assert (parts["rlnDefocusU"] != parts["rlnDefocusV"]).all()


def _select(betagal: Path, out: Path, *extra: str):
    args = ["select-classes", str(betagal / CLASS2D), "--classes", ",".join(map(str, GOOD))]
    return CliRunner().invoke(
        cli, [*args, "--particles", str(betagal / PARTICLES), "--out", str(out), *extra]
    )


def test_select_classes_keeps_the_good_classes(betagal, tmp_path):
    """1,455 particles of classes 26, 28, 50, 38, 47, 22: each in the particle file, with its class;
    the .star subset, the .txt and the .pkl index lists select the same particles."""
    r = _select(betagal, tmp_path / "good.star")
    assert r.exit_code == 0, r.output
    assert "selected 1,455 of 2,374 particles in 6 classes" in r.output
    classes = starfile.read(betagal / CLASS2D, always_dict=True)["particles"]
    class_of = dict(zip(classes["rlnImageName"], classes["rlnClassNumber"], strict=True))
    assert sum(class_of[n] in GOOD for n in class_of) == N_GOOD
    blocks = starfile.read(tmp_path / "good.star", always_dict=True)
    sub, all_names = blocks["particles"], list(_particles_table(betagal)[1]["rlnImageName"])
    assert len(sub) == N_GOOD and len(set(sub["rlnImageName"])) == N_GOOD
    assert set(sub["rlnImageName"]) <= set(all_names)
    assert all(class_of[n] in GOOD for n in sub["rlnImageName"])
    assert blocks["optics"].equals(starfile.read(betagal / PARTICLES, always_dict=True)["optics"])
    # index lists: the rows of the particle file, the same particles in the same order
    for name in ("good.txt", "good.pkl"):
        r = _select(betagal, tmp_path / name)
        assert r.exit_code == 0, r.output
        rows = select_particles(N_PARTICLES, tmp_path / name)  # what --ind reads
        assert [all_names[i] for i in rows] == list(sub["rlnImageName"])
    assert isinstance(pickle.loads((tmp_path / "good.pkl").read_bytes()), np.ndarray)
    # image names written another way (no zero padding, ./ before the path) match the same images
    doc = read_star_document(betagal / PARTICLES)
    doc.particles.lines = [re.sub(r"\b0+(\d+)@Extract", r"\1@./Extract", ln) for ln in doc.particles.lines]
    write_star_document(tmp_path / "renamed.star", doc)
    args = ["select-classes", str(betagal / CLASS2D), "--classes", ",".join(map(str, GOOD))]
    args += ["--particles", str(tmp_path / "renamed.star"), "--out", str(tmp_path / "renamed.txt")]
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert np.array_equal(select_particles(N_PARTICLES, tmp_path / "renamed.txt"), rows)
    assert "12@./Extract/job009/Movies/" in (tmp_path / "renamed.star").read_text()
    # --origins: the Class2D origins (Å), without angles, read back by cryoforge's reader
    r = _select(betagal, tmp_path / "good_origins.star", "--origins")
    assert r.exit_code == 0, r.output
    table = read_star(tmp_path / "good_origins.star")
    origin = {
        n: (x, y)
        for n, x, y in zip(
            classes["rlnImageName"], classes["rlnOriginXAngst"], classes["rlnOriginYAngst"], strict=True
        )
    }
    want = np.array([origin[n] for n in table.image_names])
    np.testing.assert_allclose(table.shifts_angstrom, want, atol=1e-6)
    assert np.abs(want).max() > 3.54  # the 2D origins are not all zero
    assert table.rotations is None  # Class2D's in-plane angle is not carried as a 3D pose


def test_run_on_selected_real_particles_writes_map_and_poses(betagal, tmp_path):
    """A test-sized ab initio run on 300 selected particles, starting from their Class2D origins:
    ``map.mrc`` at 3.54 Å/voxel, 64³, and ``poses.star`` with a pose per particle."""
    good = tmp_path / "good.star"
    assert _select(betagal, good, "--origins").exit_code == 0
    search = (
        '{"iterations": 2, "starts": 1, "start_iterations": 1, "start_subset": 100, '
        '"refine_steps_deg": [3.0], "initial_origins": "input"}'
    )
    small = {
        "source.datadir": str(betagal),
        "schedule.amortize_steps": "0",
        "schedule.fit_steps": "20",
        "schedule.search": search,
        "encoder.channels": "[8, 16]",
        "encoder.head_hidden": "[32]",
        "volume.hidden_dim": "32",
        "train.batch_size": "16",
        "train.tensorboard": "false",
        "train.progress": "false",
    }
    args = ["run", "--config", str(ROOT / "examples" / "demo.toml"), "--particles", str(good)]
    args += ["-d", str(tmp_path / "run"), "--first", "300"]
    for k, v in small.items():
        args += ["-o", k, v]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    vol, voxel = read_map(tmp_path / "run" / "map.mrc")
    assert vol.shape == (64, 64, 64) and voxel == pytest.approx(3.54, abs=1e-4)
    assert np.isfinite(vol).all() and vol.std() > 0
    poses = read_star(tmp_path / "run" / "poses.star")
    assert len(poses) == 300 and poses.rotations is not None


def _without_column(src: Path, dst: Path, label: str) -> Path:
    doc = read_star_document(src)
    block = doc.particles
    j = block.labels.index(label)
    block.lines = [" ".join(t for k, t in enumerate(block.row(i)) if k != j) for i in range(len(block))]
    block.labels.pop(j)
    write_star_document(dst, doc)
    return dst


def _first_rows(src: Path, dst: Path, n: int) -> Path:
    doc = read_star_document(src)
    doc.particles.lines = doc.particles.lines[:n]
    write_star_document(dst, doc)
    return dst


def test_select_classes_errors_are_one_line(betagal, tmp_path):
    """Exit 2 and one line naming the file and the field (or the option) for each mistake."""
    cls, parts = str(betagal / CLASS2D), str(betagal / PARTICLES)
    out = str(tmp_path / "good.star")
    run = lambda *a: CliRunner().invoke(cli, ["select-classes", *a])

    r = run(cls, "--classes", "26,99,100", "--out", out)
    assert_one_line_error(
        r, "run_it025_data.star [rlnClassNumber]", "no particle in classes 99, 100", "1 to 50"
    )
    r = run(parts, "--classes", "26", "--out", out)  # the extraction's star: every class is 0
    assert_one_line_error(r, "particles.star [rlnClassNumber]", "class 0", "Class2D")
    nocls = _without_column(betagal / CLASS2D, tmp_path / "nocls.star", "rlnClassNumber")
    assert_one_line_error(run(str(nocls), "--classes", "26", "--out", out), "nocls.star [rlnClassNumber]")
    few = _first_rows(betagal / PARTICLES, tmp_path / "few.star", 100)
    r = run(cls, "--classes", "26", "--particles", str(few), "--out", out)
    assert_one_line_error(r, "few.star [rlnImageName]", "of the 379 selected particles are not in this file")
    twice = read_star_document(betagal / PARTICLES)
    twice.particles.lines.append(twice.particles.lines[0])
    write_star_document(tmp_path / "twice.star", twice)
    r = run(cls, "--classes", "26", "--particles", str(tmp_path / "twice.star"), "--out", out)
    assert_one_line_error(r, "twice.star [rlnImageName]", "listed twice (particles 1 and 2375)")
    noname = _without_column(betagal / PARTICLES, tmp_path / "noname.star", "rlnImageName")
    r = run(cls, "--classes", "26", "--particles", str(noname), "--out", out)
    assert_one_line_error(r, "noname.star [rlnImageName]")
    r = run(cls, "--classes", "26,abc", "--out", out)
    assert_one_line_error(r, "--classes", "'abc' is not a class number")
    r = run(cls, "--classes", "26", "--out", str(tmp_path / "good.mrc"))
    assert_one_line_error(r, "good.mrc [--out]", "unknown output type")
    r = run(cls, "--classes", "26", "--out", str(tmp_path / "good.txt"), "--origins")
    assert_one_line_error(r, "--origins needs a .star --out")
    r = run(cls, "--classes", "26", "--out", cls, "--overwrite")
    assert_one_line_error(r, "[--out]", "is an input of this command")
    assert not list(tmp_path.glob("good*")) and not list(tmp_path.glob(".good*"))  # nothing written
    assert run(cls, "--classes", "26", "--out", out).exit_code == 0
    r = run(cls, "--classes", "26", "--out", out)
    assert_one_line_error(r, "good.star [--out]", "--overwrite")
    assert run(cls, "--classes", "26", "--out", out, "--overwrite").exit_code == 0
