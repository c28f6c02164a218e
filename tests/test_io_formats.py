"""Reading RELION/cryoSPARC files the way cryoDRGN does; round trips; bad files."""

from __future__ import annotations

import numpy as np
import pytest

from cryoforge.errors import InputFileError
from cryoforge.io.cryosparc import read_cs
from cryoforge.io.mrc import open_stack, read_map, write_mrc
from cryoforge.io.star import read_star, write_star
from cryoforge.sources.pickles import load_array_pickle, load_cryodrgn_ctf

CASES = [
    ("FinalRefinement-OriginalParticles-PfCRT.star", "star", 300),
    ("relion31.6opticsgroups.star", "6og", None),
    ("cryosparc_P12_J24_001_particles.cs", "cs", None),
]


@pytest.mark.parametrize("fname,tag,box", CASES)
def test_poses_and_ctf_equal_cryodrgn(cryodrgn, fname, tag, box):
    t = read_cs(cryodrgn / fname) if fname.endswith(".cs") else read_star(cryodrgn / fname, box)
    rot, trans = load_array_pickle(cryodrgn / "expected" / f"pose_{tag}.pkl")
    ctf = load_cryodrgn_ctf(cryodrgn / "expected" / f"ctf_{tag}.pkl")
    assert len(t) == len(rot) == len(ctf)
    assert np.abs(t.rotations - rot).max() < (2e-6 if tag == "cs" else 1e-12)
    frac = t.shifts_angstrom / (t.per_particle_pixel_size()[:, None] * t.box_size)
    assert np.abs(frac - trans).max() < 1e-8
    mine = t.cryodrgn_ctf()
    # cryoDRGN stores float32: compare with a relative tolerance of float32 precision
    assert np.allclose(mine, ctf, rtol=1e-6, atol=1e-5)


def test_relion5_and_relion31_stars(cryodrgn):
    t5 = read_star(cryodrgn / "relion5.star")
    assert len(t5) == 17 and t5.box_size == 448 and t5.pixel_size_angstrom == pytest.approx(0.89)
    assert t5.ctf["voltage_kv"][0] == 100 and t5.rotations.shape == (17, 3, 3)
    t31 = read_star(cryodrgn / "relion31.star")
    assert len(t31) == 5 and t31.pixel_size_angstrom == pytest.approx(2.806)


def test_relion31_with_stack_reads_images(cryodrgn):
    from cryoforge.sources.star import StarSource
    from cryoforge.types import BuildContext

    src = StarSource(
        StarSource.Options(path=str(cryodrgn / "relion31.star"), normalize=False), BuildContext()
    )
    imgs = src.read_images(np.array([4, 0]))
    raw = open_stack(cryodrgn / "relion31.mrcs")
    assert np.array_equal(imgs[0], raw[4]) and np.array_equal(imgs[1], raw[0])
    small = StarSource(
        StarSource.Options(path=str(cryodrgn / "relion31.star"), downsample_to=64), BuildContext()
    )
    assert small.image_size == 64 and small.pixel_size_angstrom == pytest.approx(2.806 * 4)


def test_star_roundtrip(tmp_path, cryodrgn):
    t = read_star(cryodrgn / "relion31.6opticsgroups.star")
    write_star(tmp_path / "out.star", t)
    back = read_star(tmp_path / "out.star")
    assert np.allclose(back.rotations, t.rotations, atol=1e-5)
    assert np.allclose(back.shifts_angstrom, t.shifts_angstrom, atol=1e-5)
    for k in t.ctf:
        assert np.allclose(back.ctf[k], t.ctf[k], atol=1e-5), k
    assert list(back.image_names) == list(t.image_names)


def test_mrc_roundtrip_and_voxel_size(tmp_path):
    vol = np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32)
    write_mrc(tmp_path / "m.mrc", vol, 1.7)
    back, voxel = read_map(tmp_path / "m.mrc")
    assert np.array_equal(back, vol) and voxel == pytest.approx(1.7)
    stack = np.random.default_rng(1).normal(size=(5, 8, 8)).astype(np.float32)
    write_mrc(tmp_path / "s.mrcs", stack, 2.0, stack=True)
    assert np.array_equal(np.asarray(open_stack(tmp_path / "s.mrcs")), stack)


def test_truncated_mrc(tmp_path):
    write_mrc(tmp_path / "s.mrcs", np.zeros((10, 8, 8), np.float32), 1.0, stack=True)
    data = (tmp_path / "s.mrcs").read_bytes()
    (tmp_path / "t.mrcs").write_bytes(data[: 1024 + 8 * 8 * 4 * 5])
    with pytest.raises(InputFileError, match=r"t\.mrcs \[nz\]: data truncated"):
        open_stack(tmp_path / "t.mrcs")


def test_wrong_mode_mrc(tmp_path):
    import mrcfile

    with mrcfile.new(tmp_path / "c.mrcs") as m:
        m.set_data(np.zeros((2, 8, 8), np.complex64))
    with pytest.raises(InputFileError, match=r"\[mode\]: unsupported MRC mode 4"):
        open_stack(tmp_path / "c.mrcs")


def test_non_square_images(tmp_path):
    write_mrc(tmp_path / "r.mrcs", np.zeros((2, 8, 6), np.float32), 1.0, stack=True)
    with pytest.raises(InputFileError, match=r"\[nx/ny\]: images are not square"):
        open_stack(tmp_path / "r.mrcs")


def test_missing_star_column(tmp_path):
    (tmp_path / "bad.star").write_text("data_\nloop_\n_rlnImageName\n_rlnDefocusU\n1@a.mrcs 1000\n")
    with pytest.raises(InputFileError, match=r"bad\.star \[rlnDefocusV|rlnVoltage\]"):
        read_star(tmp_path / "bad.star")


def test_restricted_unpickler_refuses_objects(tmp_path):
    import pickle

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"a": 1, "f": print}))
    with pytest.raises(InputFileError, match=r"refusing|numpy"):
        load_array_pickle(tmp_path / "evil.pkl")


def test_cs_write_read_roundtrip(tiny):
    t = read_star(tiny["star"])
    back = read_cs(tiny["cs"])
    assert np.allclose(back.rotations, t.rotations, atol=1e-5)
    assert np.allclose(back.shifts_angstrom, t.shifts_angstrom, atol=1e-4)
