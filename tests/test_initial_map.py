"""The search's starting map (``schedule.search.initial_map``, RELION's ``--ref``/``--ini_high``):
placed on the particles' grid, low-passed with a one-pixel raised-cosine edge, scaled to the data's
first map; bad maps are refused before a run writes anything."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cryoforge.cli import cli
from cryoforge.engine.initial_map import centred_box, initial_search_map, lowpass_weights, read_initial_map
from cryoforge.errors import InputFileError
from cryoforge.io.mrc import write_mrc
from cryoforge.ops.filters import fourier_shells
from cryoforge.testing import TINY_MODEL, assert_one_line_error


def test_lowpass_weights_are_one_then_a_raised_cosine_then_zero():
    # box 96 Å, 30 Å: the cut-off is at 3.2 Fourier px
    w = lowpass_weights(32, 96.0, 30.0).numpy()
    assert w.shape == (17,)
    np.testing.assert_allclose(w[:4], 1.0)
    assert w[4] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.8)))
    np.testing.assert_allclose(w[5:], 0.0)


def test_centred_box_keeps_the_centre_voxel_when_padding_and_cropping():
    vol = torch.zeros(9, 9, 9, dtype=torch.float64)
    vol[4, 4, 4], vol[4, 4, 6] = 1.0, 2.0
    padded = centred_box(vol, 16)
    assert padded[8, 8, 8] == 1.0 and padded[8, 8, 10] == 2.0 and padded.sum() == 3.0
    cropped = centred_box(padded, 6)
    assert cropped[3, 3, 3] == 1.0 and cropped[3, 3, 5] == 2.0


def test_initial_search_map_is_low_passed_and_scaled_to_the_datas_first_map():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(32, 32, 32, generator=g, dtype=torch.float64)
    like = 7.0 * torch.randn(16, 16, 16, generator=g, dtype=torch.float64)
    out = initial_search_map(ref, 16, 96.0, 30.0, like).double()  # float32 out: 1e-5 tolerances
    spec, shells = torch.fft.fftn(out), fourier_shells(16)
    # nothing beyond the edge (shell 4 is the last one the raised cosine reaches)
    assert float(spec[shells >= 5].abs().max()) < 1e-6 * float(spec.abs().max())
    # the power of shells 1-2 is the first map's
    low = (shells >= 1) & (shells <= 2)
    p_like = float(torch.fft.fftn(like)[low].abs().pow(2).sum())
    assert float(spec[low].abs().pow(2).sum()) == pytest.approx(p_like, rel=1e-5)
    # within the pass band, the reference's Fourier crop up to one scale factor
    crop = torch.fft.fftshift(torch.fft.fftn(ref))[8:24, 8:24, 8:24]
    ratio = (
        torch.fft.fftshift(spec)[(torch.fft.fftshift(shells) <= 3)] / crop[torch.fft.fftshift(shells) <= 3]
    )
    assert (
        float(ratio.real.std()) < 1e-5 * float(ratio.real.mean().abs())
        and float(ratio.imag.abs().max()) < 1e-5
    )


def test_a_map_of_another_pixel_size_is_refused(tmp_path):
    path = tmp_path / "ref.mrc"
    write_mrc(path, np.zeros((16, 16, 16), np.float32), 4.0)
    with pytest.raises(InputFileError, match="voxel size 4 Å, but the particles have 3 Å/px"):
        read_initial_map(path, 16, 3.0)
    assert read_initial_map(path, 20, 4.02).shape == (20, 20, 20)  # within 1 %


SMALL = {**TINY_MODEL, "schedule.fit_steps": 1, "train.max_steps": 2}


def _args(search: dict) -> list[str]:
    out: list[str] = []
    for k, v in {**SMALL, "schedule.search": {"iterations": 1, "refine_steps_deg": [], **search}}.items():
        out += ["-o", k, json.dumps(v)]
    return out


def test_a_missing_or_mismatched_initial_map_fails_before_the_run_folder_exists(tiny, tmp_path):
    d = tmp_path / "run"
    r = CliRunner().invoke(
        cli,
        [
            "run",
            "--particles",
            str(tiny["star"]),
            "-d",
            str(d),
            *_args({"initial_map": str(tmp_path / "none.mrc")}),
        ],
    )
    assert_one_line_error(r, "schedule.search.initial_map")
    wrong = tmp_path / "wrong.mrc"
    write_mrc(wrong, np.zeros((8, 8, 8), np.float32), 99.0)
    r = CliRunner().invoke(
        cli, ["run", "--particles", str(tiny["star"]), "-d", str(d), *_args({"initial_map": str(wrong)})]
    )
    assert_one_line_error(r, "voxel size")
    assert not d.exists()


def test_a_relative_initial_map_is_stored_absolute_and_an_overwrite_never_removes_it(
    tiny, tmp_path, monkeypatch
):
    """config.json names the starting map by absolute path (``--resume`` from anywhere), the search
    logs it, and ``--overwrite`` of the run that holds the map is refused before anything goes."""
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copy(tiny["map"], tmp_path / "ref.mrc")
    r = CliRunner().invoke(
        cli, ["run", "--particles", str(tiny["star"]), "-d", "run", *_args({"initial_map": "ref.mrc"})]
    )
    assert r.exit_code == 0, r.output
    stored = json.loads((tmp_path / "run" / "config.json").read_text())["schedule"]["options"]["search"]
    assert stored["initial_map"] == str(tmp_path / "ref.mrc")
    assert "starting from" in (tmp_path / "run" / "run.log").read_text()
    before = (tmp_path / "run" / "map.mrc").read_bytes()
    again = ["run", "--particles", str(tiny["star"]), "-d", "run", "--overwrite"]
    r = CliRunner().invoke(cli, [*again, *_args({"initial_map": "run/map.mrc"})])
    assert_one_line_error(r, "map.mrc")
    assert (tmp_path / "run" / "map.mrc").read_bytes() == before
