"""Issue 22, class 4: a generated corpus of malformed inputs (STAR, .cs, stacks, maps, TOML/JSON
configs, ``-o`` values, ``--ind`` files, a full disk) walked through every command: each ends in
one line ``Error: ...`` and exit code 2, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cryoforge.cli import cli
from cryoforge.testing import TINY_RUN, assert_one_line_error

SMALL = {**TINY_RUN, "train.max_steps": 2, "train.pictures": False}


def small_args() -> list[str]:
    out: list[str] = []
    for k, v in SMALL.items():
        out += ["-o", k, json.dumps(v)]
    return out


def assert_one_line_exit_2(r, *needles: str) -> str:
    """Exit 2 through the command line's error path (SystemExit), one line, no traceback."""
    assert isinstance(r.exception, SystemExit), (r.exception, r.output)
    return assert_one_line_error(r, *needles)


def invoke(*a: object):
    return CliRunner().invoke(cli, [str(x) for x in a])


# ----------------------------------------------------------------------------- the corpus


def _star_rows(text: str) -> tuple[list[str], int]:
    lines = text.splitlines()
    first = next(i for i, ln in enumerate(lines) if "@" in ln)
    return lines, first


def _edit_row(edit: Callable[[list[str]], list[str]]) -> Callable[[str], str]:
    def make(text: str) -> str:
        lines, i = _star_rows(text)
        lines[i] = " ".join(edit(lines[i].split()))
        return "\n".join(lines) + "\n"

    return make


def _replace(a: str, b: str) -> Callable[[str], str]:
    return lambda text: text.replace(a, b, 1)


STARS: dict[str, tuple[Callable[[str], str], str]] = {
    "extra_field": (_edit_row(lambda t: [*t, "7"]), "13 values for 12 columns"),
    "short_row": (_edit_row(lambda t: t[:-1]), "11 values for 12 columns"),
    "text_defocus": (_edit_row(lambda t: [t[0], "abc", *t[2:]]), "rlnDefocusU"),
    "nan_defocus": (_edit_row(lambda t: [t[0], "nan", *t[2:]]), "rlnDefocusU"),
    "inf_angle": (_edit_row(lambda t: [*t[:7], "1e400", *t[8:]]), "rlnAngleRot"),
    "text_optics_group": (_edit_row(lambda t: [*t[:6], "one", *t[7:]]), "rlnOpticsGroup"),
    "undefined_optics_group": (_edit_row(lambda t: [*t[:6], "7", *t[7:]]), "rlnOpticsGroup"),
    "image_beyond_stack": (_edit_row(lambda t: ["000999@particles.mrcs", *t[1:]]), "rlnImageName"),
    "missing_stack": (_edit_row(lambda t: ["000001@nowhere.mrcs", *t[1:]]), "nowhere.mrcs"),
    "zero_pixel_size": (_replace(" 4.0 16 2", " 0.0 16 2"), "rlnImagePixelSize"),
    "negative_pixel_size": (_replace(" 4.0 16 2", " -4.0 16 2"), "rlnImagePixelSize"),
    "text_pixel_size": (_replace(" 4.0 16 2", " four 16 2"), "rlnImagePixelSize"),
    "optics_twice": (_replace(" 4.0 16 2\n", " 4.0 16 2\n1 opticsGroup1 300 2.7 0.1 4.0 16 2\n"), "twice"),
    "column_twice": (_replace("_rlnDefocusV #3", "_rlnDefocusU #3"), "rlnDefocusU"),
    "table_twice": (lambda t: t + t[t.index("data_particles") :], "data_particles"),
    "no_rows": (lambda t: t[: _star_rows_start(t)], "no particles"),
    "no_tables": (lambda t: "# nothing here\n", "particle"),
    "empty": (lambda t: "", ""),
    "not_utf8": (lambda t: t.replace("opticsGroup1", "optics\udcffGroup1"), "UTF-8"),
    "value_outside_block": (lambda t: "42\n" + t, "data_"),
}


def _star_rows_start(text: str) -> int:
    return text.index("000001@")


def _write_text(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8", errors="surrogateescape"))


@pytest.fixture(scope="module")
def corpus(tiny, tmp_path_factory) -> dict[str, Path]:
    """Malformed files beside a copy of the tiny stack (so that their image names resolve)."""
    d = tmp_path_factory.mktemp("corpus")
    shutil.copy(tiny["mrcs"], d / "particles.mrcs")
    text = Path(tiny["star"]).read_text()
    files: dict[str, Path] = {}
    for name, (make, _) in STARS.items():
        files[f"star:{name}"] = d / f"{name}.star"
        _write_text(files[f"star:{name}"], make(text))
    cs = np.load(tiny["cs"])
    cs_cases: dict[str, np.ndarray] = {}
    import numpy.lib.recfunctions as rf

    for field in ("blob/idx", "blob/shape", "blob/path", "blob/psize_A", "ctf/df1_A"):
        cs_cases["no_" + field.replace("/", "_")] = rf.drop_fields(cs, [field], usemask=False)
    a = cs.copy()
    a["blob/shape"][0] = [0, 0]
    cs_cases["zero_shape"] = a
    a = cs.copy()
    a["blob/idx"][0] = 10**6
    cs_cases["idx_beyond_stack"] = a
    a = cs.copy()
    a["ctf/df1_A"][0] = np.nan
    cs_cases["nan_defocus"] = a
    a = cs.copy()
    a["blob/path"][0] = b"nowhere.mrcs"
    cs_cases["missing_stack"] = a
    a = cs.copy()
    a["blob/psize_A"][:] = -1
    cs_cases["negative_pixel_size"] = a
    for name, arr in cs_cases.items():
        files[f"cs:{name}"] = d / f"{name}.cs"
        with open(files[f"cs:{name}"], "wb") as fh:
            np.save(fh, arr)
    files["cs:garbage"] = d / "garbage.cs"
    files["cs:garbage"].write_bytes(b"\x93NUMPY garbage" * 10)
    files["cs:star_text"] = d / "star_text.cs"
    files["cs:star_text"].write_text(text)
    raw = Path(tiny["mrcs"]).read_bytes()
    stacks = {
        "truncated": raw[: len(raw) // 2],
        "header_only": raw[:1024],
        "short_header": raw[:100],
        "garbage": os.urandom(4096),
        "empty": b"",
    }
    for name, data in stacks.items():
        sub = d / f"stack_{name}"
        sub.mkdir()
        (sub / "particles.mrcs").write_bytes(data)
        (sub / "particles.star").write_text(text)
        files[f"stack:{name}"] = sub / "particles.star"
        files[f"mrc:{name}"] = sub / "particles.mrcs"
    (d / "folder.star").mkdir()
    files["star:a_folder"] = d / "folder.star"
    return files


TOML = {
    "syntax": "[train\nseed = 1\n",
    "unknown_key": "[train]\nbogus = 1\n",
    "wrong_type": "[train]\nbatch_size = 'many'\n",
    "inf": "[train]\nlr_encoder = inf\n",
    "huge_int": "[train]\nbatch_size = 99999999999999999999\n",
    "stage_option": "[schedule.options.search]\niterations = -3\n",
    "unknown_stage_option": "[schedule.options.amortize]\nbogus = 1\n",
    "duplicate_key": "[train]\nseed = 1\nseed = 2\n",
    "deep": "x = " + "[" * 20000 + "]" * 20000 + "\n",
    "not_utf8": "[train]\nseed = 1 # \udcff\n",
    "unknown_component": "[volume]\nname = 'nope'\n",
}

OVERRIDES = [
    ("schedule.search", '{"iterations": -3}'),
    ("schedule.amortize", '{"bogus": 1}'),
    ("schedule.search", "[" * 20000 + "]" * 20000),
    ("schedule.amortize", '{"a":' * 500 + "1" + "}" * 500),
    ("schedule.search", '{"iterations": 1, "iterations": 2}'),
    ("train.batch_size", "9999999999999999999999"),
    ("train.lr_encoder", "inf"),
    ("train.lr_volume", "NaN"),
    ("train.seed", "-1"),
    ("encoder.channels", "[-8, 8]"),
    ("encoder.channels", "[]"),
    ("volume.hidden_dim", "1e400"),
    ("train.bogus", "1"),
    ("nothing", "1"),
    ("volume.options", "3"),
    ("train.device", "tpu"),
]


# ----------------------------------------------------------------------------- the walk


STACK_LEVEL = {"image_beyond_stack", "missing_stack", "idx_beyond_stack"}
"""Faults of the images, not of the table: ``simulate --like`` reads only the table."""


def _commands(key: str, path: Path, tmp: Path, trained: Path) -> list[list[object]]:
    """Every command that reads a particle file, pointed at ``path``."""
    cmds: list[list[object]] = [
        ["run", "--particles", path, "-d", tmp / "run", *small_args(), "--dry-run"],
        ["run", "--particles", path, "-d", tmp / "run", *small_args()],
        ["reconstruct", path, "--out", tmp / "rec.mrc"],
        ["infer", trained, "--particles", path, "--out", tmp / "inf.star"],
    ]
    kind, name = key.split(":", 1)
    if kind != "stack" and name not in STACK_LEVEL:
        cmds.append(["simulate", "--like", path, tmp / "map.mrc", "--out", tmp / "sim", "-n", "3"])
    return cmds


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("trained") / "r"
    r = invoke("run", "--particles", tiny["star"], "-d", d, *small_args())
    assert r.exit_code == 0, r.output
    return d


@pytest.mark.parametrize("kind", ["star", "cs", "stack"])
def test_malformed_particle_files_through_every_command(corpus, trained, tiny, tmp_path, kind):
    shutil.copy(tiny["map"], tmp_path / "map.mrc")
    for key, path in corpus.items():
        if not key.startswith(kind + ":"):
            continue
        needle = STARS.get(key.split(":", 1)[1], (None, ""))[1] if kind == "star" else ""
        for cmd in _commands(key, path, tmp_path, trained):
            r = invoke(*cmd)
            try:
                assert_one_line_exit_2(r, needle)
            except AssertionError as exc:
                raise AssertionError(f"{key} through {cmd[0]}: {exc}") from None
        assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_malformed_maps_through_evaluate_reconstruct_and_run(corpus, tiny, tmp_path):
    maps = [p for k, p in corpus.items() if k.startswith("mrc:")] + [Path("/dev/zero"), tmp_path]
    for m in maps:
        for cmd in (
            ["evaluate", m, "-d", tmp_path / "ev"],
            ["evaluate", tiny["map"], "--ref", m, "-d", tmp_path / "ev"],
            ["evaluate", tiny["map"], "--half2", m, "-d", tmp_path / "ev"],
            [
                "run",
                "--particles",
                tiny["star"],
                "-d",
                tmp_path / "r",
                "-o",
                "ground_truth_map",
                str(m),
                "--dry-run",
            ],
            ["simulate", m, "--out", tmp_path / "sim", "-n", "3"],
        ):
            r = invoke(*cmd)
            try:
                assert_one_line_exit_2(r)
            except AssertionError as exc:
                raise AssertionError(f"{m} through {cmd[:2]}: {exc}") from None


@pytest.mark.parametrize("name", sorted(TOML))
def test_malformed_config_files(tiny, tmp_path, name):
    cfg = tmp_path / "c.toml"
    _write_text(cfg, TOML[name])
    for extra in (["--dry-run"], []):
        r = invoke("run", "--config", cfg, "--particles", tiny["star"], "-d", tmp_path / "r", *extra)
        assert_one_line_exit_2(r)
    assert not (tmp_path / "r").exists()
    js = tmp_path / "c.json"
    _write_text(js, TOML[name].replace("=", ":"))  # not JSON either
    assert_one_line_exit_2(invoke("run", "--config", js, "--dry-run"))


@pytest.mark.parametrize("key, value", OVERRIDES)
def test_malformed_override_values(tiny, tmp_path, key, value):
    for extra in (["--dry-run"], []):
        r = invoke(
            "run", "--particles", tiny["star"], "-d", tmp_path / "r", *small_args(), "-o", key, value, *extra
        )
        line = assert_one_line_exit_2(r)
        assert len(line) < 400, line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "content, needle",
    [
        ("0\n99999999999999999999999\n", "too large"),
        ("0\n-1\n", "out of range"),
        ("0\nx\n", "not an integer"),
        ("0\n0\n", "twice"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_malformed_index_files(tiny, tmp_path, content, needle):
    ind = tmp_path / "ind.txt"
    if isinstance(content, bytes):
        ind.write_bytes(content)
    else:
        ind.write_text(content)
    for cmd in (
        ["run", "--particles", tiny["star"], "--ind", ind, "-d", tmp_path / "r", *small_args(), "--dry-run"],
        ["reconstruct", tiny["star"], "--ind", ind, "--out", tmp_path / "rec.mrc"],
    ):
        assert_one_line_exit_2(invoke(*cmd), "--ind", needle)
    for special in (tmp_path, Path("/dev/zero")):
        r = invoke("run", "--particles", tiny["star"], "--ind", special, "-d", tmp_path / "r", "--dry-run")
        line = assert_one_line_exit_2(r)
        assert "not found" not in line


def test_a_utf8_byte_order_mark_is_read(tiny, tmp_path):
    shutil.copy(tiny["mrcs"], tmp_path / "particles.mrcs")
    (tmp_path / "particles.star").write_text("\ufeff" + Path(tiny["star"]).read_text())
    r = invoke(
        "run", "--particles", tmp_path / "particles.star", "-d", tmp_path / "r", *small_args(), "--dry-run"
    )
    assert r.exit_code == 0, r.output
    cfg = tmp_path / "c.toml"
    cfg.write_text("\ufeff[train]\nseed = 3\n")
    r = invoke("run", "--config", cfg, "--dry-run")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["train"]["seed"] == 3


def test_cs_errors_name_cryosparc_fields(corpus, tmp_path):
    for key, field in (("cs:idx_beyond_stack", "blob/idx"), ("cs:missing_stack", "blob/path")):
        r = invoke("run", "--particles", corpus[key], "-d", tmp_path / "r", *small_args(), "--dry-run")
        line = assert_one_line_exit_2(r, field)
        assert "rln" not in line


LIMIT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from cryoforge.cli import main
sys.argv = ["cryoforge", *sys.argv[2:]]
main()
"""


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
def test_a_file_size_limit_is_one_line_in_every_command(tiny, trained, tmp_path):
    """EFBIG, as a full disk's ENOSPC: one line naming the file, exit 2, outputs intact."""
    script = tmp_path / "limit.py"
    script.write_text(LIMIT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run_copy = tmp_path / "trained"
    shutil.copytree(trained, run_copy)
    before = (run_copy / "checkpoint.pt").read_bytes()
    cases = [
        (2000, ["run", "--particles", tiny["star"], "-d", tmp_path / "r", *small_args()]),
        (2000, ["run", "--resume", run_copy, "-o", "train.max_steps", "4"]),
        (2000, ["infer", run_copy, "--out", tmp_path / "inf.star"]),
        (1000, ["evaluate", tiny["map"], "--ref", tiny["map"], "-d", tmp_path / "ev"]),
        (20000, ["simulate", tiny["map"], "--out", tmp_path / "sim", "-n", "200"]),
        (2000, ["reconstruct", tiny["star"], "--out", tmp_path / "rec.mrc"]),
    ]
    for limit, cmd in cases:
        p = subprocess.run(
            [sys.executable, str(script), str(limit), *map(str, cmd)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.startswith(("Error", "Traceback"))]
        assert p.returncode == 2, (cmd[0], p.stderr[-2000:])
        assert "Traceback" not in p.stderr, (cmd[0], p.stderr[-2000:])
        assert len(lines) == 1 and "File too large" in lines[0] and "EFBIG" in lines[0], (cmd[0], lines)
    assert (run_copy / "checkpoint.pt").read_bytes() == before


def test_ctrl_c_outside_the_stages_exits_130(monkeypatch, tmp_path):
    """A KeyboardInterrupt before training (here while reading the config) is exit 130, one line."""
    import cryoforge.config as config

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(config, "load_config_file", interrupted)
    monkeypatch.setattr("cryoforge.commands.common.load_config_file", interrupted)
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    r = CliRunner().invoke(cli, ["run", "--config", str(cfg), "--dry-run"], standalone_mode=True)
    assert r.exit_code == 130, (r.exit_code, r.output)
    assert "Traceback" not in r.output
