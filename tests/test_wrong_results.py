"""A wrong result never exits 0: duplicate keys, absurd or signal-free images, NaN checkpoints.

Each input here used to give a map (exit 0) or a NaN checkpoint kept as "the last good one".
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cryoforge.errors import InputFileError, TrainingDiverged
from cryoforge.io.mrc import open_stack, write_mrc
from cryoforge.io.star import read_star
from cryoforge.testing import copy_dataset


def _source(star: Path):
    from cryoforge.sources.star import StarSource

    return StarSource(StarSource.Options(path=str(star)), None)


def _cryoforge(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    """The installed command in a fresh process (the exit code as a user sees it)."""
    command = Path(sys.executable).with_name("cryoforge")
    return subprocess.run(
        [str(command), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _one_line_exit_2(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# ----------------------------------------------------------------------------- duplicate keys


def _optics_row_twice(text: str, change_pixel: str | None = None) -> str:
    lines = text.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.split()[:2] == ["1", "opticsGroup1"])
    twin = lines[i].split()
    if change_pixel is not None:
        twin[5] = change_pixel  # rlnImagePixelSize
    lines.insert(i + 1, " ".join(twin))
    return "\n".join(lines) + "\n"


def test_an_optics_group_defined_twice_is_an_error_naming_it(tiny, tmp_path):
    t = copy_dataset(tiny, tmp_path / "d")
    t["star"].write_text(_optics_row_twice(t["star"].read_text(), change_pixel="1.0"))
    with pytest.raises(
        InputFileError, match=r"\[rlnOpticsGroup\]: optics group 1 is defined twice in data_optics"
    ):
        read_star(t["star"])
    proc = _cryoforge("reconstruct", t["star"], "--out", tmp_path / "map.mrc", cwd=tmp_path)
    _one_line_exit_2(proc, "particles.star", "optics group 1 is defined twice", "rlnOpticsGroup")
    assert not (tmp_path / "map.mrc").exists()


def test_text_in_an_optics_group_is_an_error_naming_the_row(tiny, tmp_path):
    t = copy_dataset(tiny, tmp_path / "d")
    lines = t["star"].read_text().splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("000002@"))
    header = [ln for ln in lines if ln.startswith("_rln")]
    column = [h.split()[0] for h in header].index("_rlnOpticsGroup", len(header) - len(lines[i].split()))
    cells = lines[i].split()
    cells[column - (len(header) - len(cells))] = "one"
    lines[i] = " ".join(cells)
    t["star"].write_text("\n".join(lines) + "\n")
    with pytest.raises(
        InputFileError, match=r"\[rlnOpticsGroup\]: data_particles row 2: 'one' is not an optics"
    ):
        read_star(t["star"])


# ----------------------------------------------------------------------------- images


def _stack_with(t: dict[str, Path], edit) -> None:
    stack = np.array(open_stack(t["mrcs"]))
    edit(stack)
    with np.errstate(over="ignore"):  # the header's statistics of a 3e38 pixel
        write_mrc(t["mrcs"], stack, 4.0, stack=True)


def test_one_image_with_huge_finite_pixels_is_refused_naming_it(tiny, tmp_path):
    t = copy_dataset(tiny, tmp_path / "d")
    _stack_with(t, lambda s: s.__setitem__((6, 3, 4), 3e38))
    with pytest.raises(InputFileError, match=r"particles\.mrcs \[data\]: image 7 has a pixel of 3e\+38"):
        _source(t["star"])


def test_a_huge_pixel_outside_the_sample_stops_the_run_not_the_numbers(tiny, tmp_path, monkeypatch):
    import cryoforge.sources.base as base

    t = copy_dataset(tiny, tmp_path / "d")
    _stack_with(t, lambda s: s.__setitem__((6, 3, 4), 3e38))
    monkeypatch.setattr(base, "QUALITY_SAMPLE", 1)
    src = _source(t["star"])
    assert src.quality.sampled == 1
    rows = np.arange(len(src))
    with pytest.raises(InputFileError, match=r"particles\.mrcs \[data\]: image 7 has a pixel more than"):
        src.read_images(rows)


def test_an_all_zero_stack_is_refused_with_exit_2(tiny, tmp_path):
    t = copy_dataset(tiny, tmp_path / "d")
    _stack_with(t, lambda s: s.__setitem__(slice(None), 0.0))
    with pytest.raises(InputFileError, match=r"\[data\]: every image all zeros: the data carry no signal"):
        _source(t["star"])
    proc = _cryoforge("reconstruct", t["star"], "--out", tmp_path / "map.mrc", cwd=tmp_path)
    _one_line_exit_2(proc, "particles.mrcs", "no signal")


# ----------------------------------------------------------------------------- checkpoints


def _ctx(tmp_path: Path, value: float) -> SimpleNamespace:
    net = torch.nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.fill_(value)
    return SimpleNamespace(
        pipeline=net,
        optimizer=None,
        optimizer_stage=None,
        state={"step": 7, "stage": 0},
        result=SimpleNamespace(history=[]),
        config=SimpleNamespace(model_dump_json=lambda: "{}"),
        poses=None,
        spare_encoders=dict,
        checkpoint_path=tmp_path / "checkpoint.pt",
    )


def test_a_nan_checkpoint_is_never_written_over_the_last_good_one(tmp_path):
    from cryoforge.engine.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(_ctx(tmp_path, 1.0))
    good = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(TrainingDiverged, match=r"weight weight became NaN or Inf by step 7; the last good"):
        save_checkpoint(_ctx(tmp_path, float("nan")))
    assert (tmp_path / "checkpoint.pt").read_bytes() == good
    assert torch.equal(load_checkpoint(tmp_path / "checkpoint.pt")["model"]["weight"], torch.ones(2, 2))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
