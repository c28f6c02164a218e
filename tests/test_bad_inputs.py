"""Every bad input ends in one line naming the file and the field (or option), exit code 2.

Each case builds its bad input in a fresh folder, runs the command in-process through click, and
checks: exit code 2, exactly one non-empty output line, that line names the file and the field,
no traceback, no torch advice about ``weights_only=False``, and the input files unchanged (sha256).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cryoforge.cli import cli
from cryoforge.testing import TINY_RUN

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

SMALL = {
    **TINY_RUN,
    "volume.hidden_dim": 16,
    "train.max_steps": 2,
    "train.device": "cpu",
}


def small_opts(**over) -> list[str]:
    args: list[str] = []
    for k, v in {**SMALL, **over}.items():
        args += ["-o", k, json.dumps(v)]
    return args


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Case:
    """A command line, the words its one error line must contain, and files that must not change."""

    args: list[str]
    needles: list[str]
    inputs: list[Path] = field(default_factory=list)


def copy_tiny(tiny: dict[str, Path], d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, p in tiny.items():
        out[k] = d / p.name
        shutil.copy(p, out[k])
    return out


def star_text(t: dict[str, Path]) -> str:
    return t["star"].read_text()


def set_optics_cell(text: str, column: int, value: str | None) -> str:
    """Set (or, with ``None``, delete) cell ``column`` (0-based) of the optics group 1 row."""
    lines = text.splitlines()
    for i, ln in enumerate(lines):
        cells = ln.split()
        if len(cells) > 2 and cells[0] == "1" and cells[1] == "opticsGroup1":
            if value is None:
                del cells[column]
            else:
                cells[column] = value
            lines[i] = " ".join(cells)
    return "\n".join(lines) + "\n"


def replace_names(text: str, new: str) -> str:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("000003@"):
            lines[i] = new + line[len("000003@") :]
    return "\n".join(lines) + "\n"


def write_empty_stack(path: Path, L: int = 16) -> None:
    import mrcfile

    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.zeros((1, L, L), np.float32))
        m.set_image_stack()
    raw = bytearray(path.read_bytes()[:1024])
    raw[8:12] = np.int32(0).tobytes()  # nz = 0
    raw[36:40] = np.int32(0).tobytes()  # mz = 0
    path.write_bytes(bytes(raw))


def run_args(star: Path, d: Path, **over) -> list[str]:
    return ["run", "--particles", str(star), "-d", str(d.parent / "out"), *small_opts(**over)]


# ----------------------------------------------------------------------------- cases


def c_empty_stack(t, d):
    p = d / "empty.mrcs"
    write_empty_stack(p)
    return Case(run_args(p, d), ["empty.mrcs", "[nz]", "no images"], [p])


def c_star_no_rows(t, d):
    text = star_text(t)
    head = text[: text.index("000001@")]
    p = d / "norows.star"
    p.write_text(head)
    return Case(run_args(p, d), ["norows.star", "data_particles", "no particles"], [p])


def _bad_name(name):
    def build(t, d):
        p = d / "badname.star"
        p.write_text(replace_names(star_text(t), name))
        return Case(run_args(p, d), ["badname.star", "[rlnImageName]", "particle 3", name], [p, t["mrcs"]])

    return build


def c_duplicate_column(t, d):
    text = star_text(t).replace("_rlnOriginYAngst #12\n", "_rlnOriginYAngst #12\n_rlnDefocusU #13\n")
    lines = text.splitlines()
    lines = [ln + "\t1.0" if "@particles.mrcs" in ln else ln for ln in lines]
    p = d / "dup.star"
    p.write_text("\n".join(lines) + "\n")
    return Case(run_args(p, d), ["dup.star", "[rlnDefocusU]", "twice"], [p])


def c_cs_no_rows(t, d):
    arr = np.load(t["cs"])
    p = d / "empty.cs"
    with open(p, "wb") as fh:
        np.save(fh, arr[:0])
    return Case(run_args(p, d), ["empty.cs", "no particles"], [p])


def c_star_not_utf8(t, d):
    raw = t["star"].read_bytes().replace(b"opticsGroup1", b"optics\xff\xfeGroup1")
    p = d / "latin.star"
    p.write_bytes(raw)
    return Case(run_args(p, d), ["latin.star", "UTF-8", "line 15"], [p])


def c_cs_path_not_utf8(t, d):
    arr = np.load(t["cs"])
    arr["blob/path"] = b"parti\xffcles.mrcs"
    p = d / "latin.cs"
    with open(p, "wb") as fh:
        np.save(fh, arr)
    return Case(run_args(p, d), ["latin.cs", "[blob/path]", "UTF-8"], [p])


def c_json_not_utf8(t, d):
    p = d / "cfg.json"
    p.write_bytes(b'{"output_dir": "caf\xe9"}')
    return Case(["run", "--config", str(p)], ["cfg.json", "UTF-8"], [p])


def _mrcs_with(t, d, **opts):
    stack = t["mrcs"]
    return Case(
        ["run", "--particles", str(stack), "-d", str(d.parent / "out"), *small_opts(**opts)], [], [stack]
    )


def c_object_pickle(t, d):
    p = d / "poses.pkl"
    rot = np.empty(24, dtype=object)
    rot[:] = ["a"] * 24
    with open(p, "wb") as fh:
        pickle.dump((rot, np.zeros((24, 2))), fh)
    c = _mrcs_with(t, d, **{"source.poses": str(p)})
    c.needles, c.inputs = ["poses.pkl", "[dtype]", "object"], [*c.inputs, p]
    return c


def c_unreadable(t, d):
    if IS_ROOT:  # root reads a mode-000 file anyway: a folder given as the file instead
        p = d / "folder.star"
        p.mkdir()
        return Case(run_args(p, d), ["folder.star", "is a folder"], [])
    p = d / "locked.star"
    shutil.copy(t["star"], p)
    p.chmod(0)
    return Case(run_args(p, d), ["locked.star", "Permission denied"], [])


def _readonly_dir(d: Path) -> Path:
    """A folder nobody can write in. As root, permissions do not stop writes: a path under a
    regular file instead (the folder cannot be created)."""
    if IS_ROOT:
        blocker = d / "blocker"
        blocker.write_text("x")
        return blocker / "out"
    ro = d / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return ro


def c_ro_run(t, d):
    out = _readonly_dir(d)
    args = ["run", "--particles", str(t["star"]), "-d", str(out), *small_opts()]
    return Case(args, [str(out), "--output-dir"], [t["star"]])


def c_ro_reconstruct(t, d):
    out = _readonly_dir(d)
    return Case(
        ["reconstruct", str(t["star"]), "--out", str(out / "m.mrc")], [str(out), "--out"], [t["star"]]
    )


def c_ro_simulate(t, d):
    out = _readonly_dir(d)
    return Case(
        ["simulate", str(t["map"]), "--out", str(out), "-n", "4", "--box-size", "16"],
        [str(out), "--out"],
        [t["map"]],
    )


def c_ro_evaluate(t, d):
    out = _readonly_dir(d)
    return Case(
        ["evaluate", str(t["map"]), "--ref", str(t["map"]), "--out", str(out)],
        [str(out), "--out"],
        [t["map"]],
    )


def c_bad_device(t, d):
    return Case(run_args(t["star"], d, **{"train.device": "tpu"}), ["train.device", "tpu"], [t["star"]])


def c_box_too_small(t, d):
    return Case(
        [
            "run",
            "--particles",
            str(t["star"]),
            "-d",
            str(d.parent / "out"),
            "-o",
            "source.downsample_to",
            "8",
            "-o",
            "train.max_steps",
            "1",
            "-o",
            "train.progress",
            "false",
            "-o",
            "train.device",
            "cpu",
        ],
        ["source.downsample_to", "8", "encoder"],
        [t["star"]],
    )


def _pixel(value):
    def build(t, d):
        p = d / "px.star"
        p.write_text(set_optics_cell(star_text(t), 5, value))
        return Case(run_args(p, d), ["px.star", "[rlnImagePixelSize]", "> 0"], [p])

    return build


def c_cs_pixel_zero(t, d):
    arr = np.load(t["cs"])
    arr["blob/psize_A"][5] = 0.0
    p = d / "px.cs"
    with open(p, "wb") as fh:
        np.save(fh, arr)
    return Case(run_args(p, d), ["px.cs", "[blob/psize_A]", "particle 6"], [p])


def _ctf_pickle(t, d, col, value):
    from cryoforge.io.star import read_star

    arr = read_star(t["star"]).cryodrgn_ctf()
    arr[:, 1] = 4.0
    arr[4, col] = value
    p = d / "ctf.pkl"
    with open(p, "wb") as fh:
        pickle.dump(arr, fh)
    return p


def c_pkl_pixel_zero(t, d):
    p = _ctf_pickle(t, d, 1, 0.0)
    c = _mrcs_with(t, d, **{"source.ctf": str(p)})
    c.needles, c.inputs = ["ctf.pkl", "[pixel_size_A]", "particle 5"], [*c.inputs, p]
    return c


def c_pkl_voltage_nan(t, d):
    p = _ctf_pickle(t, d, 5, np.nan)
    c = _mrcs_with(t, d, **{"source.ctf": str(p)})
    c.needles, c.inputs = ["ctf.pkl", "[voltage_kV]", "particle 5"], [*c.inputs, p]
    return c


def _star_value(column_pos: int, value: str, field: str):
    def build(t, d):
        lines = star_text(t).splitlines()
        for i, ln in enumerate(lines):
            if ln.startswith("000007@"):
                cells = ln.split()
                cells[column_pos] = value
                lines[i] = " ".join(cells)
        p = d / "val.star"
        p.write_text("\n".join(lines) + "\n")
        return Case(run_args(p, d), ["val.star", f"[{field}]", "particle 7"], [p])

    return build


def c_voltage_inf(t, d):
    p = d / "volt.star"
    p.write_text(set_optics_cell(star_text(t), 2, "inf"))
    return Case(run_args(p, d), ["volt.star", "[rlnVoltage]", "particle 1"], [p])


def c_no_pixel_anywhere(t, d):
    """A bare stack whose header says 0 Å/px and no option gives one: fail, not 1 Å/px."""
    from cryoforge.io.mrc import open_stack, write_mrc

    p = d / "nopx.mrcs"
    write_mrc(p, np.asarray(open_stack(t["mrcs"])), 0.0, stack=True)
    return Case(run_args(p, d), ["nopx.mrcs", "pixel size", "source.pixel_size_angstrom"], [p])


def c_nan_pose_pkl(t, d):
    from cryoforge.io.star import read_star

    tab = read_star(t["star"])
    rot = tab.rotations.copy()
    rot[2, 0, 0] = np.nan
    p = d / "poses.pkl"
    with open(p, "wb") as fh:
        pickle.dump((rot, np.zeros((len(rot), 2))), fh)
    c = _mrcs_with(t, d, **{"source.poses": str(p)})
    c.needles, c.inputs = ["poses.pkl", "[rot]", "particle 3"], [*c.inputs, p]
    return c


def c_gt_map_wrong_size(t, d):
    from cryoforge.io.mrc import write_mrc

    m = d / "gt.mrc"
    write_mrc(m, np.zeros((20, 20, 20), np.float32), 4.0)
    args = run_args(t["star"], d)
    args[2:2] = []
    return Case([*args, "-o", "ground_truth_map", str(m)], ["gt.mrc", "ground_truth_map", "20"], [m])


def c_evaluate_mask_without_half2(t, d):
    args = ["evaluate", str(t["map"]), "--mask", "auto", "--out", str(d / "ev")]
    return Case(args, ["--mask", "--half2"], [t["map"]])


def c_evaluate_mask_values(t, d):
    from cryoforge.io.mrc import read_map, write_mrc

    vol, px = read_map(t["map"])
    m = d / "mask.mrc"
    write_mrc(m, np.full(vol.shape, 2.0, np.float32), px)
    args = ["evaluate", str(t["map"]), "--half2", str(t["map"]), "--mask", str(m), "--out", str(d / "ev")]
    return Case(args, ["mask.mrc", "--mask", "[0, 1]"], [m, t["map"]])


def c_halfmap_mask_wrong_size(t, d):
    from cryoforge.io.mrc import write_mrc

    m = d / "mask.mrc"
    write_mrc(m, np.ones((20, 20, 20), np.float32), 4.0)
    args = [*run_args(t["star"], d), "-o", "train.gt_poses", "true", "-o", "train.halfmap_mask", str(m)]
    return Case(args, ["mask.mrc", "train.halfmap_mask", "20"], [m])


def c_halfmap_mask_values(t, d):
    from cryoforge.io.mrc import write_mrc

    m = d / "mask.mrc"
    write_mrc(m, np.full((16, 16, 16), 255.0, np.float32), 4.0)
    args = [*run_args(t["star"], d), "-o", "train.gt_poses", "true", "-o", "train.halfmap_mask", str(m)]
    return Case(args, ["mask.mrc", "train.halfmap_mask", "[0, 1]", "255"], [m])


def c_halfmap_mask_file_ab_initio(t, d):
    from cryoforge.io.mrc import write_mrc

    m = d / "mask.mrc"
    write_mrc(m, np.ones((16, 16, 16), np.float32), 4.0)
    args = [*run_args(t["star"], d), "-o", "train.halfmap_mask", str(m)]
    return Case(args, ["train.halfmap_mask", "gt_poses", "auto"], [m])


def c_halfmap_mask_missing(t, d):
    args = [*run_args(t["star"], d), "-o", "train.halfmap_mask", "autp"]
    return Case(args, ["train.halfmap_mask", "autp"], [])


def c_gt_map_wrong_pixel(t, d):
    from cryoforge.io.mrc import write_mrc

    m = d / "gt.mrc"
    write_mrc(m, np.zeros((16, 16, 16), np.float32), 2.0)
    return Case(
        [*run_args(t["star"], d), "-o", "ground_truth_map", str(m)],
        ["gt.mrc", "ground_truth_map", "Å/px"],
        [m],
    )


def c_truncated_ckpt(t, d, trained=None):
    return None  # filled by the infer cases below


BUILDERS: dict[str, Callable] = {
    "stack_0_images": c_empty_stack,
    "star_no_rows": c_star_no_rows,
    "name_abc@": _bad_name("abc@"),
    "name_1.5@": _bad_name("1.5@"),
    "name_0@": _bad_name("0@"),
    "name_-3@": _bad_name("-3@"),
    "star_duplicate_column": c_duplicate_column,
    "cs_0_rows": c_cs_no_rows,
    "star_not_utf8": c_star_not_utf8,
    "cs_path_not_utf8": c_cs_path_not_utf8,
    "json_config_not_utf8": c_json_not_utf8,
    "object_dtype_pickle": c_object_pickle,
    "unreadable_file": c_unreadable,
    "readonly_out_run": c_ro_run,
    "readonly_out_reconstruct": c_ro_reconstruct,
    "readonly_out_simulate": c_ro_simulate,
    "readonly_out_evaluate": c_ro_evaluate,
    "device_tpu": c_bad_device,
    "box_too_small_for_encoder": c_box_too_small,
    "star_pixel_0": _pixel("0.000000"),
    "star_pixel_negative": _pixel("-1.5"),
    "star_pixel_nan": _pixel("nan"),
    "cs_pixel_0": c_cs_pixel_zero,
    "pkl_pixel_0": c_pkl_pixel_zero,
    "pkl_voltage_nan": c_pkl_voltage_nan,
    "star_defocus_nan": _star_value(1, "nan", "rlnDefocusU"),
    "star_defocus_inf": _star_value(2, "inf", "rlnDefocusV"),
    "star_voltage_inf": c_voltage_inf,
    "star_pose_nan": _star_value(8, "nan", "rlnAngleTilt"),
    "star_word_for_number": _star_value(1, "abc", "rlnDefocusU"),
    "pkl_pose_nan": c_nan_pose_pkl,
    "stack_without_pixel_size": c_no_pixel_anywhere,
    "gt_map_wrong_size": c_gt_map_wrong_size,
    "halfmap_mask_wrong_size": c_halfmap_mask_wrong_size,
    "halfmap_mask_missing": c_halfmap_mask_missing,
    "evaluate_mask_without_half2": c_evaluate_mask_without_half2,
    "evaluate_mask_values": c_evaluate_mask_values,
    "halfmap_mask_values": c_halfmap_mask_values,
    "halfmap_mask_file_ab_initio": c_halfmap_mask_file_ab_initio,
    "gt_map_wrong_pixel": c_gt_map_wrong_pixel,
}


def check_one_line(r, needles: list[str]) -> str:
    out = r.output
    assert "Traceback" not in out and "weights_only=False" not in out, out
    assert r.exit_code == 2, f"exit {r.exit_code}: {out!r} {r.exception!r}"
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def c_garbage_mrc(t, d):
    p = d / "garbage.mrcs"
    p.write_bytes(b"SECRET-BYTES-" * 200)
    return Case(run_args(p, d), ["garbage.mrcs", "not a readable MRC file"], [p])


def c_short_mrc(t, d):
    p = d / "short.mrcs"
    p.write_bytes(b"SECRET" * 10)
    return Case(run_args(p, d), ["short.mrcs", "too short"], [p])


def c_garbage_map(t, d):
    p = d / "garbage.mrc"
    p.write_bytes(b"SECRET-BYTES-" * 200)
    return Case(["evaluate", str(p), "--out", str(d / "ev")], ["garbage.mrc", "not a readable MRC file"], [p])


def c_malicious_pickle(t, d):
    p = d / "evil.pkl"
    marker = d / "pwned"
    p.write_bytes(pickle.dumps(_Evil(str(marker))))
    c = Case(
        ["reconstruct", str(t["mrcs"]), "--poses", str(p), "--out", str(d / "m.mrc")],
        ["evil.pkl", "refusing"],
        [p],
    )
    return c


class _Evil:
    """Unpickling this would run ``touch marker`` through ``os.system``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def c_garbage_cs(t, d):
    p = d / "garbage.cs"
    p.write_bytes(np.random.default_rng(1).bytes(500))
    return Case(run_args(p, d), ["garbage.cs", "not a numpy .npy file"], [p])


def c_gt_map_missing(t, d):
    return Case(
        [*run_args(t["star"], d), "-o", "ground_truth_map", str(d / "nope.mrc")],
        ["nope.mrc", "[ground_truth_map]", "not found"],
        [],
    )


def c_volume_as_stack(t, d):
    return Case(run_args(t["map"], d), ["map.mrc", "[ispg]", "3D map"], [t["map"]])


def c_missing_datadir(t, d):
    star = t["star"]
    return Case(
        [*run_args(star, d), "-o", "source.datadir", json.dumps(str(d / "no_such_folder"))],
        ["no_such_folder", "source.datadir", "folder not found"],
        [star],
    )


BUILDERS.update(
    {
        "datadir_missing": c_missing_datadir,
        "cs_garbage_bytes": c_garbage_cs,
        "gt_map_missing": c_gt_map_missing,
        "volume_given_as_stack": c_volume_as_stack,
        "mrc_garbage_no_echo": c_garbage_mrc,
        "mrc_too_short_no_echo": c_short_mrc,
        "map_garbage_no_echo": c_garbage_map,
        "pickle_malicious_reduce": c_malicious_pickle,
    }
)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_bad_input_is_one_line_exit_2(name, tiny, tmp_path):
    t = copy_tiny(tiny, tmp_path / "data")
    case = BUILDERS[name](t, tmp_path / "data")
    before = {p: sha(p) for p in case.inputs}
    r = CliRunner().invoke(cli, case.args)
    check_one_line(r, case.needles)
    assert {p: sha(p) for p in case.inputs} == before
    assert not (tmp_path / "out" / "checkpoint.pt").exists()
    assert not list(tmp_path.rglob("pwned")), "the malicious file's code ran"


def test_no_file_bytes_and_no_code_run(tiny, tmp_path):
    """MRC errors never quote the file; a malicious pickle's code never runs."""
    for name in (
        "mrc_garbage_no_echo",
        "mrc_too_short_no_echo",
        "map_garbage_no_echo",
        "pickle_malicious_reduce",
    ):
        d = tmp_path / name / "data"
        t = copy_tiny(tiny, d)
        case = BUILDERS[name](t, d)
        r = CliRunner().invoke(cli, case.args)
        assert "SECRET" not in r.output and r.exit_code == 2, r.output
    assert not list(tmp_path.rglob("pwned"))


# ----------------------------------------------------------------------------- trained runs: infer


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory) -> dict[str, Path]:
    """Two tiny finished runs: one with an encoder, one fitted to the known poses."""
    from cryoforge.config import RunConfig, apply_override
    from cryoforge.engine.run import run
    from cryoforge.testing import write_tiny_dataset

    root = tmp_path_factory.mktemp("trained")
    out = {}
    for name, extra in (("enc", {}), ("gt", {"train.gt_poses": True})):
        c = RunConfig()
        for k, v in {
            "source.path": str(tiny["star"]),
            "output_dir": str(root / name),
            **SMALL,
            **extra,
        }.items():
            c = apply_override(c, k, v)
        run(c)
        out[name] = root / name
    out["other_box"] = write_tiny_dataset(root / "box24", n=6, L=24)["star"]
    return out


def _run_copy(trained, d: Path) -> Path:
    dst = d / "run"
    shutil.copytree(trained["enc"], dst)
    return dst


def i_batch_zero(tr, d):
    run_dir = _run_copy(tr, d)
    return Case(
        ["infer", str(run_dir), "--batch-size", "0"],
        ["--batch-size", "at least 1"],
        [run_dir / "checkpoint.pt"],
    )


def i_gt_poses(tr, d):
    return Case(
        ["infer", str(tr["gt"])],
        ["config.json", "[train.gt_poses]", "no encoder"],
        [tr["gt"] / "checkpoint.pt"],
    )


def i_other_box(tr, d):
    run_dir = _run_copy(tr, d)
    return Case(
        ["infer", str(run_dir), "--particles", str(tr["other_box"])],
        ["particles.star", "[--particles]", "24 px", "16 px"],
        [tr["other_box"], run_dir / "checkpoint.pt"],
    )


def _ckpt(writer, why):
    def build(tr, d):
        run_dir = _run_copy(tr, d)
        ck = run_dir / "checkpoint.pt"
        writer(ck, d)
        return Case(["infer", str(run_dir)], ["checkpoint.pt", "checkpoint", why], [ck])

    return build


def _truncate(ck, d):
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])


def _empty(ck, d):
    ck.write_bytes(b"")


def _garbage(ck, d):
    ck.write_bytes(np.random.default_rng(0).bytes(4096))


def _malicious(ck, d):
    import torch

    torch.save({"model": _Evil(str(d / "pwned"))}, ck)


def i_readonly_out(tr, d):
    run_dir = _run_copy(tr, d)
    out = _readonly_dir(d)
    return Case(
        ["infer", str(run_dir), "--out", str(out / "p.star")],
        [str(out), "[--out]"],
        [run_dir / "checkpoint.pt"],
    )


def _plugin_dir(d: Path, body: str) -> Path:
    p = d / "plugins"
    p.mkdir()
    (p / "broken.py").write_text(body)
    return p


def i_plugin_exit(tr, d):
    run_dir = _run_copy(tr, d)
    p = _plugin_dir(d, "import sys\nsys.exit(0)\n")
    return Case(
        ["infer", str(run_dir), "--plugins-dir", str(p)],
        ["broken.py", "'broken'", "sys.exit(0)"],
        [run_dir / "checkpoint.pt"],
    )


INFER_BUILDERS = {
    "infer_batch_size_0": i_batch_zero,
    "infer_gt_poses_run": i_gt_poses,
    "infer_other_box": i_other_box,
    "checkpoint_truncated": _ckpt(_truncate, "truncated"),
    "checkpoint_empty": _ckpt(_empty, "empty"),
    "checkpoint_garbage": _ckpt(_garbage, "not a checkpoint"),
    "checkpoint_malicious": _ckpt(_malicious, "Python objects"),
    "readonly_out_infer": i_readonly_out,
    "infer_plugin_sys_exit": i_plugin_exit,
}


@pytest.mark.parametrize("name", list(INFER_BUILDERS))
def test_bad_infer_input_is_one_line_exit_2(name, trained, tmp_path):
    case = INFER_BUILDERS[name](trained, tmp_path)
    before = {p: sha(p) for p in case.inputs}
    r = CliRunner().invoke(cli, case.args)
    check_one_line(r, case.needles)
    assert {p: sha(p) for p in case.inputs} == before
    assert not list(tmp_path.rglob("pwned")), "the malicious file's code ran"
    assert not list(tmp_path.rglob("inferred_poses.star"))


def test_infer_accepts_plugins_dir(trained, tmp_path):
    run_dir = _run_copy(trained, tmp_path)
    p = _plugin_dir(tmp_path, "X = 1\n")  # a valid (empty) local plugin
    r = CliRunner().invoke(cli, ["infer", str(run_dir), "--plugins-dir", str(p)])
    assert r.exit_code == 0, r.output
    assert (run_dir / "inferred_poses.star").is_file()


# ----------------------------------------------------------------------------- plugins


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("import sys\nsys.exit(0)\n", "sys.exit(0)"),
        ("raise ZeroDivisionError('boom')\n", "ZeroDivisionError: boom"),
    ],
)
@pytest.mark.parametrize("command", [["plugins", "list"], ["run", "--dry-run"]])
def test_plugin_that_exits_or_raises_is_exit_2(tmp_path, body, needle, command):
    """In a real process: a plugin calling sys.exit(0) while loading must not end with exit 0."""
    p = _plugin_dir(tmp_path, body)
    proc = subprocess.run(
        [sys.executable, "-m", "cryoforge.cli", *command, "--plugins-dir", str(p)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and "broken" in lines[0] and needle in lines[0], lines
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- many stacks


FD_SCRIPT = r"""
import resource, sys
import numpy as np
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
from cryoforge.plugins import load_registry
src = load_registry().build("source", "star", {"path": sys.argv[1]})
n = len(src)
seen = 0
for s in range(0, n, 100):
    imgs = src.read_images(np.arange(s, min(n, s + 100)))
    seen += len(imgs)
    assert src._stacks.open_count <= src._stacks.max_open
expect = np.arange(n, dtype=np.float32)  # image i is filled with the value i
raw = (src.read_images(np.arange(n)) * src._scale + src._offset)[:, 0, 0]
assert np.allclose(raw, expect, atol=1e-3), raw[:5]
print("read", seen, "open", src._stacks.open_count)
"""


def test_1100_one_image_stacks_at_ulimit_256(tmp_path):
    """RELION's one stack per micrograph: a bounded pool keeps the open files under the limit."""
    from cryoforge.io.mrc import write_mrc
    from cryoforge.io.star import write_star
    from cryoforge.io.table import CTF_FIELDS, ParticleTable

    n, L = 1100, 8
    for i in range(n):
        image = np.full((1, L, L), float(i), np.float32)
        image[0, 1, 1] += 0.5  # not constant: a stack of constant images carries no signal and is refused
        write_mrc(tmp_path / f"mic{i:04d}.mrcs", image, 2.0, stack=True)
    ctf = {k: np.zeros(n) for k in CTF_FIELDS}
    ctf.update(defocus_u_angstrom=np.full(n, 1e4), defocus_v_angstrom=np.full(n, 1e4))
    ctf.update(voltage_kv=np.full(n, 300.0), cs_mm=np.full(n, 2.7), amplitude_contrast=np.full(n, 0.1))
    names = np.array([f"000001@mic{i:04d}.mrcs" for i in range(n)])
    write_star(
        tmp_path / "p.star",
        ParticleTable(tmp_path / "p.star", names, ctf, pixel_size_angstrom=2.0, box_size=L),
    )
    proc = subprocess.run(
        [sys.executable, "-c", FD_SCRIPT, str(tmp_path / "p.star")],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "read 1100" in proc.stdout


# ----------------------------------------------------------------------------- data quality


def test_duplicates_and_constant_images_are_reported_at_start(tiny, tmp_path):
    from cryoforge.io.mrc import open_stack, write_mrc

    t = copy_tiny(tiny, tmp_path / "data")
    stack = np.array(open_stack(t["mrcs"]))
    stack[4] = 0.0  # blank
    stack[9] = 3.0  # constant, not zero
    write_mrc(t["mrcs"], stack, 4.0, stack=True)
    lines = star_text(t).splitlines()
    first = next(ln for ln in lines if ln.startswith("000001@"))
    lines.insert(lines.index(first) + 1, first)  # particle 1 twice
    lines.insert(lines.index(first) + 1, first)  # and a third time
    (t["star"]).write_text("\n".join(lines) + "\n")
    r = CliRunner().invoke(cli, run_args(t["star"], tmp_path / "data", **{"train.max_steps": 1}))
    assert r.exit_code == 0, r.output
    assert "Warning: 2 of 26 particles refer to an image already used" in r.stderr
    assert "2 of 26 images are constant (zero variance, 1 of them all zeros)" in r.stderr
    assert r.output.index("Warning: 2 of 26") < r.output.index("cryoforge run:")


def test_quality_counts_directly():
    from cryoforge.sources.quality import DataQuality

    imgs = np.random.default_rng(0).normal(size=(5, 4, 4)).astype(np.float32)
    imgs[1], imgs[3] = 0.0, 7.0
    q = DataQuality.measure(np.array([0, 0, 1, 1, 0]), np.array([0, 1, 0, 0, 0]), imgs)
    assert (q.duplicates, q.constant, q.blank, q.sampled) == (2, 2, 1, 5)
    clean = DataQuality.measure(np.array([0, 0]), np.array([0, 1]), imgs[[0, 2]])
    assert clean.messages() == []


# ----------------------------------------------------------------------------- pixel size fallback


def _star_without_pixel(t, d: Path, header_px: float) -> Path:
    from cryoforge.io.mrc import open_stack, write_mrc

    write_mrc(t["mrcs"], np.array(open_stack(t["mrcs"])), header_px, stack=True)
    text = set_optics_cell(star_text(t), 5, None).replace("_rlnImagePixelSize #6\n", "")
    text = text.replace("_rlnImageSize #7", "_rlnImageSize #6")
    text = text.replace("_rlnImageDimensionality #8", "_rlnImageDimensionality #7")
    p = d / "nopx.star"
    p.write_text(text)
    return p


def test_star_without_pixel_size_uses_the_stack_header(tiny, tmp_path):
    from cryoforge.plugins import load_registry

    t = copy_tiny(tiny, tmp_path / "data")
    p = _star_without_pixel(t, tmp_path / "data", 3.5)
    src = load_registry().build("source", "star", {"path": str(p)})
    assert src.pixel_size_angstrom == pytest.approx(3.5)


def test_star_without_pixel_size_and_header_zero_fails(tiny, tmp_path):
    t = copy_tiny(tiny, tmp_path / "data")
    p = _star_without_pixel(t, tmp_path / "data", 0.0)
    r = CliRunner().invoke(cli, run_args(p, tmp_path / "data"))
    check_one_line(r, ["nopx.star", "[rlnImagePixelSize]", "no pixel size", "0 Å/px"])


def test_plugin_whose_register_hook_raises_is_one_line(tmp_path):
    body = (
        "import cryoforge\n\n@cryoforge.hookimpl\n"
        "def cryoforge_register_volumes():\n    raise RuntimeError('no GPU')\n"
    )
    p = _plugin_dir(tmp_path, body)
    r = CliRunner().invoke(cli, ["plugins", "list", "--plugins-dir", str(p)])
    check_one_line(r, ["'broken'", "cryoforge_register_volumes", "RuntimeError: no GPU"])


def test_stack_pool_keeps_at_most_max_open(tmp_path):
    from cryoforge.io.mrc import stack_info, write_mrc
    from cryoforge.io.stack_pool import StackPool

    paths = []
    for i in range(5):
        paths.append(tmp_path / f"s{i}.mrcs")
        write_mrc(paths[-1], np.full((2, 4, 4), float(i), np.float32), 1.0, stack=True)
    fds = Path("/proc/self/fd")
    n0 = len(list(fds.iterdir())) if fds.is_dir() else None
    pool = StackPool([stack_info(p) for p in paths], max_open=2)
    for _ in range(2):
        for i in (0, 1, 2, 3, 4, 0):
            assert float(pool[i][1, 0, 0]) == i
            assert pool.open_count <= 2
            if n0 is not None:  # one descriptor per open map, none left by evicted ones
                assert len(list(fds.iterdir())) - n0 <= 2
    held = pool[3]
    pool.close()
    assert pool.open_count == 0
    assert float(held[0, 0, 0]) == 3  # a map a caller still holds stays valid


@pytest.mark.parametrize(
    "args, needles",
    [
        (["run", "--bogus"], ["--bogus", "cryoforge run --help"]),
        (["infer"], ["RUN_DIR", "cryoforge infer --help"]),
        (["reconstruct", "x.star", "--batch-size"], ["--batch-size"]),
        (["frobnicate"], ["frobnicate", "cryoforge --help"]),
    ],
)
def test_usage_errors_are_one_line_exit_2(args, needles):
    """A misspelt option, a missing argument or command: one line that says where help is."""
    r = subprocess.run([sys.executable, "-m", "cryoforge.cli", *args], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert all(n in lines[0] for n in needles), lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""
