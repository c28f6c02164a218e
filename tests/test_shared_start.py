"""The half sets' shared start (``train.half_start = "shared"``, engine/shared_start.py): what the
start runs, the map it writes, when it is reused, and which runs have none. The whole path, with
its effect on the half-map FSC, is tested in ``tests/test_halfmaps.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoforge.config import RunConfig, apply_override
from cryoforge.engine.context import RunResult
from cryoforge.engine.reconstruct import backproject_particles
from cryoforge.engine.shared_start import (
    START_DIR,
    START_MAP,
    shared_lowpass_angstrom,
    shared_shells,
    shared_start,
    start_rows,
    start_search_options,
)
from cryoforge.io.mrc import read_map
from cryoforge.plugins import load_registry


def _config(**over) -> RunConfig:
    c = RunConfig()
    for k, v in {"train.half_sets": True, **over}.items():
        c = apply_override(c, k, v)
    return c


def test_the_start_is_a_search_alone_of_the_schedules_options():
    opts = start_search_options(_config(**{"schedule.search": {"size": 24, "subset": 500}}))
    assert opts == {"size": 24, "refine_steps_deg": []}  # its own particles: no subset
    assert start_search_options(_config(**{"train.gt_poses": True})) is None
    assert start_search_options(_config(**{"schedule.search.initial_map": "mine.mrc"})) is None
    cryoai = _config()
    cryoai = cryoai.model_copy(update={"schedule": cryoai.schedule.model_copy(update={"name": "cryoai"})})
    assert start_search_options(cryoai) is None


def test_start_rows_are_all_or_a_seeded_sorted_subset():
    np.testing.assert_array_equal(start_rows(10, 0), np.arange(10))
    np.testing.assert_array_equal(start_rows(50_000, 0, None), np.arange(50_000))  # subset null
    assert len(start_rows(50_000, 0, 5_000)) == 5_000
    rows = start_rows(50_000, 3)
    assert len(rows) == 20_000 and np.all(np.diff(rows) > 0) and rows[-1] < 50_000
    np.testing.assert_array_equal(rows, start_rows(50_000, 3))
    assert not np.array_equal(rows, start_rows(50_000, 4))


def test_shared_shells_follow_the_low_pass_and_its_one_pixel_edge():
    assert shared_shells(None, 96.0, 32) == 0
    assert shared_shells(30.0, 96.0, 32) == 4  # 3.2 Fourier px, edge to 4.2: shell 4 has weight 0.10
    assert shared_shells(30.0, 226.6, 64) == 8  # beta-galactosidase: 64 px of 3.54 Å
    assert shared_shells(48.0, 96.0, 32) == 2  # 2.0 exactly: shell 3 has weight 0
    # the same shells as the low-pass weights' last non-zero one
    from cryoforge.engine.initial_map import lowpass_weights

    for box, lp in ((96.0, 30.0), (226.6, 30.0), (96.0, 48.0), (192.0, 40.0)):
        w = lowpass_weights(64, box, lp).numpy()
        assert shared_shells(lp, box, 64) == int(np.nonzero(w > 1e-12)[0].max())


def test_shared_start_writes_the_backprojection_and_reuses_it_on_resume(tiny, tmp_path):
    source = load_registry().build("source", "star", {"path": str(tiny["star"])})
    calls: list[tuple[str, int, bool]] = []

    def train(cfg: RunConfig, index: np.ndarray, run_dir, resume: bool) -> RunResult:
        calls.append((cfg.schedule.name, len(index), resume))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "map.mrc").write_bytes(b"an untrained network export")
        assert not cfg.train.half_sets and cfg.schedule.options["stages"][0]["kind"] == "search"
        return RunResult(run_dir, poses=source.poses.index(torch.as_tensor(index)))

    run_dir = tmp_path / "run"
    stale = run_dir / START_DIR / START_MAP
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an old run's start")
    config = _config()
    out = shared_start(config, source, run_dir, False, train, 0)
    assert calls == [("staged", len(source), False)]  # a new run never reuses an old start
    path = run_dir / START_DIR / START_MAP
    assert not (run_dir / START_DIR / "map.mrc").exists()  # only the backprojection is left
    assert out.schedule.options["search"]["initial_map"] == str(path)
    assert shared_lowpass_angstrom(out) == 30.0 and shared_lowpass_angstrom(config) is None
    vol, voxel = read_map(path)
    expected = backproject_particles(source, np.arange(len(source)), source.poses).float().numpy()
    np.testing.assert_allclose(vol, expected, atol=1e-6 * float(np.abs(expected).max()))
    assert voxel == pytest.approx(float(source.pixel_size_angstrom), rel=1e-5)
    # resumed: the map is there, no second search
    again = shared_start(config, source, run_dir, True, train, 0)
    assert len(calls) == 1 and again.schedule.options["search"]["initial_map"] == str(path)
    # independent halves, known poses: no start
    indep = _config(**{"train.half_start": "independent"})
    assert shared_lowpass_angstrom(indep) is None


def test_a_run_killed_in_its_start_needs_resume_or_overwrite(tmp_path):
    """A checkpoint in RUN/start is progress: a plain retry is refused (it would remove the start),
    --resume finds it, --overwrite removes it."""
    from cryoforge.engine.preflight import checkpoints
    from cryoforge.errors import InputFileError
    from cryoforge.io.outputs import check_run_dir, clear_run_outputs, write_run_marker

    run_dir = tmp_path / "run"
    (run_dir / START_DIR).mkdir(parents=True)
    write_run_marker(run_dir)
    (run_dir / START_DIR / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(InputFileError, match="already holds a run"):
        check_run_dir(run_dir, False, False)
    assert checkpoints(run_dir) == [run_dir / START_DIR / "checkpoint.pt"]
    assert check_run_dir(run_dir, False, True) == "run"
    clear_run_outputs(run_dir)
    assert not (run_dir / START_DIR).exists()


def test_an_earlier_half_set_run_resumes_without_a_start(tiny, tmp_path):
    """Halves that began before the shared start existed (no RUN/start) are not given one on resume."""
    source = load_registry().build("source", "star", {"path": str(tiny["star"])})
    run_dir = tmp_path / "run"
    (run_dir / "half1").mkdir(parents=True)
    (run_dir / "half1" / "checkpoint.pt").write_bytes(b"x")

    def train(*_a, **_k):
        raise AssertionError("no start search on such a resume")

    config = _config()
    assert shared_start(config, source, run_dir, True, train, 0) is config


def test_a_search_alone_never_warns_about_contrast_from_its_untrained_network():
    from cryoforge.engine.run import fits_volume
    from cryoforge.engine.shared_start import start_config

    config = _config()
    assert fits_volume(config)
    start = start_config(config, start_search_options(config), "start")
    assert not fits_volume(start) and start.ground_truth_map is None and not start.train.pictures
