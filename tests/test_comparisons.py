"""Issue 22, class 2 (files): two files compared have the same pixel size and shape; an
``--overwrite`` leaves no output of the old run; a key given twice is an error naming it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cryoforge.cli import cli
from cryoforge.io.mrc import write_mrc
from cryoforge.testing import TINY_RUN, assert_one_line_error

SMALL = {**TINY_RUN, "train.max_steps": 2}


def invoke(*a: object):
    return CliRunner().invoke(cli, [str(x) for x in a])


def run_args(**over) -> list[str]:
    out: list[str] = []
    for k, v in {**SMALL, **over}.items():
        out += ["-o", k, json.dumps(v)]
    return out


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("trained") / "r"
    r = invoke("run", "--particles", tiny["star"], "-d", d, *run_args())
    assert r.exit_code == 0, r.output
    return d


@pytest.mark.parametrize(
    "voxel, shape, needle",
    [
        (2.0, 16, "voxel size 2 Å differs from 4 Å"),
        (0.0, 16, "voxel size 0 Å in the header: unknown"),
        (4.0, 20, "shape (20, 20, 20) differs from (16, 16, 16)"),
    ],
)
@pytest.mark.parametrize("option", ["--ref", "--half2"])
def test_evaluate_refuses_maps_on_different_grids(tiny, tmp_path, voxel, shape, needle, option):
    ref = tmp_path / "other.mrc"
    write_mrc(ref, np.random.default_rng(0).normal(size=(shape,) * 3).astype(np.float32), voxel)
    r = invoke("evaluate", tiny["map"], option, ref, "-d", tmp_path / "ev")
    assert_one_line_error(r, needle)
    assert not (tmp_path / "ev" / "metrics.json").exists()
    ok = invoke("evaluate", tiny["map"], option, tiny["map"], "-d", tmp_path / "ok")
    assert ok.exit_code == 0, ok.output


def test_infer_refuses_particles_at_another_pixel_size(trained, tiny, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(tiny["mrcs"], data / tiny["mrcs"].name)
    text = Path(tiny["star"]).read_text()
    assert " 4.0 16 2" in text
    (data / "particles.star").write_text(text.replace(" 4.0 16 2", " 2.0 16 2"))
    r = invoke("infer", trained, "--particles", data / "particles.star", "--out", tmp_path / "p.star")
    assert_one_line_error(r, "2 Å/px", "trained at 4 Å/px", "--particles")
    assert not (tmp_path / "p.star").exists()
    ok = invoke("infer", trained, "--particles", tiny["star"], "--out", tmp_path / "q.star")
    assert ok.exit_code == 0, ok.output


def test_overwrite_without_pictures_leaves_none_of_the_old_runs(tiny, tmp_path):
    d = tmp_path / "r"
    r = invoke("run", "--particles", tiny["star"], "-d", d, *run_args(**{"train.pictures": True}))
    assert r.exit_code == 0, r.output
    pictures = ["report.html", "slices.png", "progress.png"]
    assert all((d / n).is_file() for n in pictures)
    r = invoke(
        "run", "--particles", tiny["star"], "-d", d, "--overwrite", *run_args(**{"train.pictures": False})
    )
    assert r.exit_code == 0, r.output
    assert [n for n in pictures if (d / n).exists()] == []
    for n in pictures:
        assert n not in r.output


def test_a_table_given_twice_in_a_star_file_is_an_error_naming_it(tiny, tmp_path):
    text = Path(tiny["star"]).read_text()
    block = text[text.index("data_particles") :]
    (tmp_path / "particles.star").write_text(text + "\n" + block)
    shutil.copy(tiny["mrcs"], tmp_path / tiny["mrcs"].name)
    r = invoke("run", "--particles", tmp_path / "particles.star", "-d", tmp_path / "r", *run_args())
    assert_one_line_error(r, "data_particles", "appears twice")


def test_a_key_given_twice_in_json_is_an_error_naming_it(tmp_path):
    r = invoke("run", "-o", "schedule.search", '{"iterations": 1, "iterations": 3}', "--dry-run")
    assert_one_line_error(r, "-o schedule.search", "'iterations' appears twice")
    cfg = tmp_path / "c.json"
    cfg.write_text('{"train": {"seed": 1, "seed": 2}}')
    assert_one_line_error(invoke("run", "--config", cfg, "--dry-run"), "c.json", "'seed' appears twice")
    toml = tmp_path / "c.toml"
    toml.write_text("[train]\nseed = 1\nseed = 2\n")
    assert_one_line_error(invoke("run", "--config", toml, "--dry-run"), "c.toml", "cannot parse")
