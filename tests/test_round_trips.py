"""Round trips into RELION and cryoSPARC: every input column kept, only poses and shifts new.

Every star and cs file of ``../shared/data/cryodrgn`` is read, written with new poses and read
again; written stars open their images from any folder; subsets; output-folder options.
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cryoforge.cli import cli
from cryoforge.engine.pose_files import write_pose_files
from cryoforge.errors import InputFileError
from cryoforge.io.cryosparc import read_cs
from cryoforge.io.cs_overlay import cs_with_poses, read_cs_array, write_cs_array
from cryoforge.io.star import read_star
from cryoforge.io.star_document import (
    OPTICS_30_LABELS,
    ORIGIN_LABELS,
    POSE_LABELS,
    overlay_poses,
    read_star_document,
    write_star_document,
)
from cryoforge.ops.rotations import random_rotations
from cryoforge.sources.cs import CryosparcSource
from cryoforge.sources.mrcs import MrcsSource
from cryoforge.sources.star import StarSource
from cryoforge.sources.subsets import select_particles
from cryoforge.testing import TINY_RUN
from cryoforge.types import BuildContext, Pose

STARS = {  # file: (RELION version written, box size)
    "relion31.star": (30001, None),
    "relion5.star": (50001, None),
    "relion31.6opticsgroups.star": (30001, None),
    "FinalRefinement-OriginalParticles-PfCRT.star": (30001, 300),  # RELION 3.0
    "empiar_10076_7.star": (30001, 320),  # RELION 3.0, bare data_
    "toy_projections.star": (30001, 30),  # RELION 3.0, no pixel size, a non-RELION column
}
CS_FILES = ["cryosparc_P12_J24_001_particles.cs", "cryosparc_J2_particles_exported.cs", "empiar_10076_7.cs"]
NEW = set(POSE_LABELS) | set(ORIGIN_LABELS)


def new_poses(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    rot = random_rotations(n, g).double().numpy()
    return rot, np.random.default_rng(seed).normal(scale=5.0, size=(n, 2))


def columns(block) -> dict[str, list[str]]:
    return {lab: block.column(lab) for lab in block.labels}


def optics_of(doc) -> dict[str, dict[str, str]]:
    """Optics group number → its values."""
    return {
        row["rlnOpticsGroup"]: row
        for row in (
            dict(zip(doc.block("optics").labels, doc.block("optics").row(i), strict=True))
            for i in range(len(doc.block("optics")))
        )
    }


def test_every_shared_star_and_cs_file_is_covered(cryodrgn):
    assert {p.name for p in cryodrgn.glob("*.star")} == set(STARS)
    assert {p.name for p in cryodrgn.glob("*.cs")} == set(CS_FILES)


@pytest.mark.parametrize("name", list(STARS))
def test_star_round_trip_keeps_every_column(cryodrgn, tmp_path, name):
    version, box = STARS[name]
    doc, table = read_star_document(cryodrgn / name), read_star(cryodrgn / name, box)
    n = len(table)
    rot, sh = new_poses(n)
    out = tmp_path / "out.star"
    write_star_document(out, overlay_poses(doc, None, rot, sh, pixel_size_angstrom=1.0, box_size=box))
    back_doc, back = read_star_document(out), read_star(out)
    assert back_doc.version == version and len(back) == n
    # the new poses are what was written (angles to 1e-6 degrees, shifts to 1e-6 Å)
    assert np.abs(back.rotations - rot).max() < 1e-6
    assert np.abs(back.shifts_angstrom - sh).max() < 1e-6
    # and nothing cryoforge reads changed
    for k in table.ctf:
        assert np.allclose(back.ctf[k], table.ctf[k], rtol=1e-12), k
    if table.pixel_sizes_angstrom is not None:
        assert np.allclose(back.pixel_sizes_angstrom, table.pixel_sizes_angstrom, rtol=1e-12)
    before, after = columns(doc.particles), columns(back_doc.particles)
    if not doc.is_relion30:  # RELION 3.1 / 5: the same optics table, every column, value as written
        assert columns(back_doc.block("optics")) == columns(doc.block("optics"))
        assert list(after)[: len(before)] == list(before)
        for lab, values in before.items():
            if lab not in NEW:
                assert after[lab] == values, lab
        return
    # RELION 3.0 → 3.1: optics values move to data_optics; everything else is kept as written
    groups = optics_of(back_doc)
    per_particle = [groups[g] for g in after["rlnOpticsGroup"]]
    for lab, values in before.items():
        if lab in OPTICS_30_LABELS:
            if lab in ("rlnDetectorPixelSize", "rlnMagnification", "rlnPixelSize"):
                continue
            assert [row[lab] for row in per_particle] == values, lab
        elif lab in ("rlnOriginX", "rlnOriginY") or lab in NEW:
            assert lab not in after or lab in NEW
        else:
            assert after[lab] == values, lab
    px = np.array([float(row["rlnImagePixelSize"]) for row in per_particle])
    if "rlnDetectorPixelSize" in before:
        det = np.array(before["rlnDetectorPixelSize"], float)
        mag = np.array(before["rlnMagnification"], float)
        assert np.array_equal(px, det * 1e4 / mag)
    else:
        assert np.all(px == 1.0)  # no pixel size in the file: the one the run used
    assert all(int(row["rlnImageSize"]) == box for row in per_particle)
    assert all(
        float(row["rlnVoltage"]) > 0 and float(row["rlnAmplitudeContrast"]) > 0 for row in per_particle
    )


def test_relion30_origins_become_angstrom(cryodrgn, tmp_path):
    """Converted without new poses: ``rlnOriginXAngst = rlnOriginX · pixel size``, angles unchanged."""
    name = "FinalRefinement-OriginalParticles-PfCRT.star"
    doc = read_star_document(cryodrgn / name)
    write_star_document(tmp_path / "o.star", overlay_poses(doc, box_size=300))
    back = read_star_document(tmp_path / "o.star")
    p, q = columns(doc.particles), columns(back.particles)
    px = 10000 * np.array(p["rlnDetectorPixelSize"], float) / np.array(p["rlnMagnification"], float)
    for ax in "XY":
        assert np.allclose(
            np.array(q[f"rlnOrigin{ax}Angst"], float), np.array(p[f"rlnOrigin{ax}"], float) * px
        )
        assert f"rlnOrigin{ax}" not in q
    for lab in POSE_LABELS:
        assert q[lab] == p[lab]
    # the two readers agree: cryoforge reads both files to the same shifts in Å
    a, b = read_star(cryodrgn / name, 300), read_star(tmp_path / "o.star")
    assert np.allclose(a.shifts_angstrom, b.shifts_angstrom, atol=1e-9)
    assert np.allclose(a.rotations, b.rotations, atol=1e-12)


def test_six_optics_groups_keep_their_own_values(cryodrgn, tmp_path):
    doc = read_star_document(cryodrgn / "relion31.6opticsgroups.star")
    rows = np.array([0, 5, 70, 138])
    rot, sh = new_poses(len(rows))
    write_star_document(tmp_path / "o.star", overlay_poses(doc, rows, rot, sh))
    back, orig = read_star(tmp_path / "o.star"), read_star(cryodrgn / "relion31.6opticsgroups.star")
    assert len(read_star_document(tmp_path / "o.star").block("optics")) == 6
    assert sorted(set(orig.pixel_sizes_angstrom)) == [1.24, 1.25]
    assert np.array_equal(back.pixel_sizes_angstrom, orig.pixel_sizes_angstrom[rows])
    assert list(back.image_names) == list(orig.image_names[rows])


@pytest.mark.parametrize("name", CS_FILES)
def test_cs_round_trip_changes_only_the_pose_fields(cryodrgn, tmp_path, name):
    arr = read_cs_array(cryodrgn / name)
    rot, sh = new_poses(len(arr), seed=3)
    write_cs_array(tmp_path / "o.cs", cs_with_poses(arr, np.arange(len(arr)), rot, sh))
    out = np.load(tmp_path / "o.cs")
    assert list(out.dtype.names[: len(arr.dtype.names)]) == list(arr.dtype.names)
    for f in arr.dtype.names:
        if f not in ("alignments3D/pose", "alignments3D/shift"):
            assert out.dtype[f] == arr.dtype[f] and np.array_equal(out[f], arr[f]), f
    back = read_cs(tmp_path / "o.cs")
    assert np.abs(back.rotations - rot).max() < 1e-6  # float32 axis-angle
    assert np.abs(back.shifts_angstrom - sh).max() < 1e-5


def test_cs_writer_is_the_exact_inverse_of_the_reader(cryodrgn):
    """The file's own poses, read and written back, give the same rotations and shifts."""
    from cryoforge.ops.rotations import rotvec_to_matrix

    arr = read_cs_array(cryodrgn / "cryosparc_P12_J24_001_particles.cs")
    t = read_cs(cryodrgn / "cryosparc_P12_J24_001_particles.cs")
    out = cs_with_poses(arr, np.arange(len(arr)), t.rotations, t.shifts_angstrom)
    a, b = (torch.from_numpy(np.array(x["alignments3D/pose"], np.float64)) for x in (out, arr))
    assert (rotvec_to_matrix(a) - rotvec_to_matrix(b)).abs().max() < 1e-6
    # the vectors themselves match where cryoSPARC's angle is at most pi (else the same rotation
    # is written with the angle 2 pi - theta about the opposite axis)
    small = b.norm(dim=1) < np.pi - 1e-3
    assert small.sum() > 100 and (a - b)[small].abs().max() < 2e-6
    assert np.abs(out["alignments3D/shift"] - arr["alignments3D/shift"]).max() < 1e-5


def source_for(path, **opts):
    cls = {".star": StarSource, ".cs": CryosparcSource, ".mrcs": MrcsSource}[path.suffix]
    return cls(cls.Options(path=str(path), normalize=False, **opts), BuildContext())


@pytest.mark.parametrize(
    "name", ["relion31.star", "empiar_10076_7.star", "toy_projections.star", "empiar_10076_7.cs"]
)
def test_written_star_opens_its_images_from_any_folder(cryodrgn, tmp_path, monkeypatch, name):
    src = source_for(cryodrgn / name)
    n = len(src)
    rot, sh = new_poses(n, seed=1)
    out = tmp_path / "elsewhere" / "poses.star"
    written = write_pose_files(out, src, np.arange(n), Pose(torch.tensor(rot), torch.tensor(sh)))
    assert written[0] == out and (len(written) == 2) == name.endswith(".cs")
    monkeypatch.chdir(tmp_path)  # neither the input's folder nor the star's
    again = source_for(out)
    assert len(again) == n
    # the same stack (a cryoSPARC blob/sign of -1 is not a STAR column: the star's images are
    # the stored, dark ones)
    sign = 1.0 if src.table.contrast_sign is None else src.table.contrast_sign[:, None, None]
    assert np.array_equal(again.read_images(np.arange(n)), src.read_images(np.arange(n)) * sign)
    back = read_star(out)
    assert np.abs(back.rotations - rot).max() < 1e-6 and np.abs(back.shifts_angstrom - sh).max() < 1e-6
    px = src.table.per_particle_pixel_size()
    px = np.where(np.isfinite(px), px, src.original_pixel_size_angstrom)  # none in the file: the run's
    assert np.allclose(back.pixel_sizes_angstrom, px, rtol=1e-6)
    if name.endswith(".cs"):  # the .cs next to the star: the input's table, poses new
        cs = np.load(written[1])
        orig = np.load(cryodrgn / name)
        for f in orig.dtype.names:
            assert np.array_equal(cs[f], orig[f]), f
        assert np.abs(read_cs(written[1]).rotations - rot).max() < 1e-6


def test_bare_mrcs_warns_once_and_writes_a_star_relion_accepts(cryodrgn, tmp_path, caplog, monkeypatch):
    with caplog.at_level(logging.WARNING, logger="cryoforge"):
        src = source_for(cryodrgn / "hand.mrcs")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "no CTF" in warnings[0]
    assert "hand.mrcs" in warnings[0]
    rot, sh = new_poses(len(src))
    out = tmp_path / "p" / "poses.star"
    write_pose_files(out, src, np.arange(len(src)), Pose(torch.tensor(rot), torch.tensor(sh)))
    doc = read_star_document(out)
    optics = doc.block("optics")
    for lab in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize"):
        assert all(float(v) > 0 for v in optics.column(lab)), lab
    assert "rlnDefocusU" not in doc.particles.labels  # CTF-free, the way RELION reads it
    assert read_star(out).has_ctf is False
    monkeypatch.chdir(tmp_path)
    assert np.array_equal(source_for(out).read_images(np.arange(3)), src.read_images(np.arange(3)))


# ----------------------------------------------------------------------------- subsets


def test_index_files_pickle_and_text(tmp_path):
    (tmp_path / "a.pkl").write_bytes(pickle.dumps(np.array([7, 2, 4])))
    (tmp_path / "l.pkl").write_bytes(pickle.dumps([3, 1]))
    (tmp_path / "i.txt").write_text("# kept\n5\n0\n9\n")
    assert select_particles(10, tmp_path / "a.pkl").tolist() == [2, 4, 7]
    assert select_particles(10, tmp_path / "l.pkl").tolist() == [1, 3]
    assert select_particles(10, tmp_path / "i.txt", first=2).tolist() == [0, 5]
    assert select_particles(10, first=3).tolist() == [0, 1, 2]
    (tmp_path / "big.txt").write_text("1 10\n")
    with pytest.raises(InputFileError, match=r"big\.txt \[--ind\]: index 10 out of range for 10"):
        select_particles(10, tmp_path / "big.txt")
    (tmp_path / "dup.txt").write_text("1 2 1\n")
    with pytest.raises(InputFileError, match="index 1 is listed twice"):
        select_particles(10, tmp_path / "dup.txt")
    (tmp_path / "f.pkl").write_bytes(pickle.dumps(np.array([0.5, 1.0])))
    with pytest.raises(InputFileError, match="integer indices"):
        select_particles(10, tmp_path / "f.pkl")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"f": print}))
    with pytest.raises(InputFileError, match=r"refusing|index pickle"):
        select_particles(10, tmp_path / "evil.pkl")


def test_subset_source_writes_only_its_rows(cryodrgn, tmp_path):
    (tmp_path / "ind.pkl").write_bytes(pickle.dumps(np.array([4, 1])))
    src = source_for(cryodrgn / "relion31.star", ind=str(tmp_path / "ind.pkl"))
    full = source_for(cryodrgn / "relion31.star")
    assert len(src) == 2 and np.array_equal(src.read_images(np.arange(2)), full.read_images(np.array([1, 4])))
    rot, sh = new_poses(2)
    write_pose_files(tmp_path / "p.star", src, np.arange(2), Pose(torch.tensor(rot), torch.tensor(sh)))
    out, orig = (
        columns(read_star_document(tmp_path / "p.star").particles),
        columns(read_star_document(cryodrgn / "relion31.star").particles),
    )
    assert out["rlnMicrographName"] == [orig["rlnMicrographName"][i] for i in (1, 4)]
    assert out["rlnRandomSubset"] == [orig["rlnRandomSubset"][i] for i in (1, 4)]
    assert len(source_for(cryodrgn / "hand.mrcs", first=7)) == 7


def test_reconstruct_first_n_equals_reconstructing_those_rows(tiny, tmp_path):
    from cryoforge.engine.reconstruct import reconstruct_file
    from cryoforge.io.mrc import read_map

    toy = tiny["star"]
    reconstruct_file(toy, tmp_path / "first.mrc", None, False, first=10)
    (tmp_path / "ind.txt").write_text("\n".join(str(i) for i in range(10)))
    reconstruct_file(toy, tmp_path / "ind.mrc", None, False, ind=str(tmp_path / "ind.txt"))
    # the same 10 rows as their own star
    names = [f"{i + 1:06d}@{tiny['mrcs']}" for i in range(10)]
    sub = tmp_path / "sub.star"
    write_star_document(sub, overlay_poses(read_star_document(toy), np.arange(10), None, None, names))
    reconstruct_file(sub, tmp_path / "sub.mrc", None, False, ind=None)
    a, b, c = (read_map(tmp_path / f)[0] for f in ("first.mrc", "ind.mrc", "sub.mrc"))
    assert np.array_equal(a, b)
    assert np.allclose(a, c, atol=1e-5 * np.abs(a).max())
    reconstruct_file(toy, tmp_path / "all.mrc", None, False)
    assert not np.allclose(read_map(tmp_path / "all.mrc")[0], a, atol=1e-3 * np.abs(a).max())


def test_reconstruct_cli_takes_first_and_ind(tiny, tmp_path):
    r = CliRunner().invoke(
        cli,
        [
            "reconstruct",
            str(tiny["star"]),
            "--out",
            str(tmp_path / "m.mrc"),
            "--first",
            "9",
        ],
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(
        cli,
        [
            "reconstruct",
            str(tiny["star"]),
            "--out",
            str(tmp_path / "m.mrc"),
            "--ind",
            str(tmp_path / "none.txt"),
        ],
    )
    assert r.exit_code == 2 and "none.txt [--ind]: index file not found" in r.output


# ----------------------------------------------------------------------------- output folders


def test_output_dir_spelling_and_out_alias(tiny, tmp_path):
    for flag in ("-d", "--output-dir", "--out"):
        d = tmp_path / f"sim{flag}"
        r = CliRunner().invoke(cli, ["simulate", str(tiny["map"]), flag, str(d), "-n", "3", "--snr", "0"])
        assert r.exit_code == 0, r.output
        assert len(read_star(d / "particles.star")) == 3
        e = tmp_path / f"ev{flag}"
        r = CliRunner().invoke(cli, ["evaluate", str(tiny["map"]), "--ref", str(tiny["map"]), flag, str(e)])
        assert r.exit_code == 0, r.output
        assert (e / "metrics.json").is_file()
    assert "-d, --output-dir, --out" in CliRunner().invoke(cli, ["simulate", "--help"]).output


# ----------------------------------------------------------------------------- portable runs

SMALL = TINY_RUN


def _small(*args: str) -> list[str]:
    out = list(args)
    for k, v in SMALL.items():
        out += ["-o", k, json.dumps(v)]
    return out


def test_runs_are_portable_and_cs_inputs_get_a_cs(tiny, tmp_path, monkeypatch):
    """Started from folder A with relative paths; resumed and inferred from folder B."""
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "data").mkdir(parents=True)
    b.mkdir()
    for f in ("star", "mrcs", "cs"):
        shutil.copy(tiny[f], a / "data" / tiny[f].name)
    (a / "r").mkdir()
    shutil.copy(tiny["map"], a / "r" / "truth.mrc")  # a file of the run's own
    (a / "keep.txt").write_text("0 3 5 6 7 9 10 11 12 20\n")
    monkeypatch.chdir(a)
    steps = ["-o", "train.max_steps", "2", "-o", "train.checkpoint_every_steps", "1"]
    args = ["run", "--particles", "data/particles.cs", "-d", "r", "--ind", "keep.txt", "--first", "8"]
    r = CliRunner().invoke(cli, _small(*args, "-o", "ground_truth_map", "r/truth.mrc", *steps))
    assert r.exit_code == 0, r.output
    cfg = json.loads((a / "r" / "config.json").read_text())
    assert cfg["source"]["options"]["path"] == str(a / "data" / "particles.cs")  # input: absolute
    assert cfg["source"]["options"]["ind"] == str(a / "keep.txt")
    assert cfg["output_dir"] == "." and cfg["ground_truth_map"] == "truth.mrc"  # the run's own: relative
    kept = [0, 3, 5, 6, 7, 9, 10, 11]
    cs = np.load(a / "r" / "poses.cs")
    assert cs["uid"].tolist() == np.load(a / "data" / "particles.cs")["uid"][kept].tolist()
    assert len(read_star(a / "r" / "poses.star")) == 8
    monkeypatch.chdir(b)
    r = CliRunner().invoke(cli, ["run", "--resume", "../a/r"])
    assert r.exit_code == 0, r.output
    assert "resumed from" in (a / "r" / "run.log").read_text()
    r = CliRunner().invoke(cli, ["infer", "../a/r"])
    assert r.exit_code == 0, r.output
    assert "inferred_poses.cs" in r.output
    inferred = a / "r" / "inferred_poses.star"
    assert len(read_star(inferred)) == 8 and len(np.load(inferred.with_suffix(".cs"))) == 8
    r = CliRunner().invoke(
        cli, ["infer", "../a/r", "--particles", "../a/data/particles.star", "--out", "x.star"]
    )
    assert r.exit_code == 0, r.output
    assert len(read_star(b / "x.star")) == 24  # another particle file: the run's subset does not apply
    r = CliRunner().invoke(cli, ["infer", "../a/r", "--first", "3", "--out", "y.star"])
    assert r.exit_code == 0 and len(read_star(b / "y.star")) == 3
    monkeypatch.chdir(tmp_path)  # the written star opens its images from anywhere
    src = source_for(a / "r" / "inferred_poses.star")
    direct = source_for(a / "data" / "particles.star")
    assert np.array_equal(src.read_images(np.arange(8)), direct.read_images(np.array(kept)))


def test_cs_fields_with_a_relion_column_reach_the_star(cryodrgn):
    from cryoforge.io.cs_overlay import cs_star_columns

    arr = read_cs_array(cryodrgn / "cryosparc_P12_J24_001_particles.cs")
    cols = cs_star_columns(arr)
    assert set(np.unique(cols["rlnRandomSubset"])) == {1, 2}
    assert np.array_equal(cols["rlnRandomSubset"], arr["alignments3D/split"].astype(int) + 1)
    loc = np.zeros(
        2,
        [
            ("location/micrograph_path", "S20"),
            ("location/center_x_frac", "<f4"),
            ("location/center_y_frac", "<f4"),
            ("location/micrograph_shape", "<u4", (2,)),
        ],
    )
    loc["location/micrograph_path"] = [b">J3/mic_001.mrc", b"J3/mic_002.mrc"]
    loc["location/center_x_frac"], loc["location/center_y_frac"] = [0.25, 0.5], [0.5, 0.75]
    loc["location/micrograph_shape"] = [4000, 3000]  # (ny, nx)
    cols = cs_star_columns(loc)
    assert cols["rlnMicrographName"].tolist() == ["J3/mic_001.mrc", "J3/mic_002.mrc"]
    assert cols["rlnCoordinateX"].tolist() == [750.0, 1500.0]
    assert cols["rlnCoordinateY"].tolist() == [2000.0, 3000.0]


def test_a_runs_config_json_repeats_it_from_anywhere(tiny, tmp_path, monkeypatch):
    from cryoforge.commands.common import build_config
    from cryoforge.engine.portable import portable_json
    from cryoforge.plugins import load_registry

    run_dir = tmp_path / "r"
    (run_dir / "data").mkdir(parents=True)
    shutil.copy(tiny["map"], run_dir / "data" / "map.mrc")
    cfg = build_config(
        None,
        {},
        (("ground_truth_map", str(run_dir / "data" / "map.mrc")),),
        str(tiny["star"]),
        str(run_dir),
        False,
    )
    (run_dir / "config.json").write_text(portable_json(cfg, load_registry(), run_dir))
    (run_dir / "plugins.json").write_text("{}")
    data = json.loads((run_dir / "config.json").read_text())
    assert data["ground_truth_map"] == "data/map.mrc" and data["output_dir"] == "."
    moved = tmp_path / "moved"
    shutil.move(run_dir, moved)  # the folder can move: its own files go with it
    monkeypatch.chdir(tiny["star"].parent)
    again = build_config(str(moved / "config.json"), {}, (), None, str(tmp_path / "r2"), False)
    assert again.ground_truth_map == str(moved / "data" / "map.mrc")
    assert again.source.options["path"] == str(tiny["star"].absolute())
    assert again.output_dir == str(tmp_path / "r2")
