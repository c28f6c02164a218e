"""Ab initio with the default schedule: the search solves poses; stages resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cryoforge.config import RunConfig, apply_override, load_config_file
from cryoforge.engine.checkpoint import load_checkpoint
from cryoforge.engine.run import run
from cryoforge.io.star import read_star
from cryoforge.metrics.poses import pose_errors
from cryoforge.ops.rotations import geodesic_distance_deg
from cryoforge.ops.search import grid_spacing_deg, local_rotations, pair_errors, so3_grid
from cryoforge.simulation.simulate import SimulationSettings, simulate

ROOT = Path(__file__).resolve().parents[1]

# test-sized: small networks, a short search; the search itself keeps the shipped settings
SMALL = {
    "encoder.channels": [8, 16],
    "encoder.head_hidden": [32],
    "volume.hidden_dim": 32,
    "schedule.fit_steps": 40,
    "schedule.amortize_steps": 40,
    "schedule.search": {"iterations": 8, "refine_steps_deg": [3.0, 1.5]},
    "train.batch_size": 16,
    "train.tensorboard": False,
    "train.progress": False,
}


@pytest.fixture(scope="module")
def clean_case(tmp_path_factory) -> Path:
    """A small clean case: 4AKE, 2,000 particles, L=32, 3 Å/px, CTF, no noise, off-centre by
    Gaussian origins of σ = 2 px, as a picker leaves them (with 600 particles the first band of
    5 Fourier px is too ambiguous: 20° median error; 2,000 reach 1.7°)."""
    d = tmp_path_factory.mktemp("abinit_clean")
    settings = SimulationSettings(
        n_particles=2000, snr=None, seed=3, defocus_median_angstrom=15000, shift_std_angstrom=6.0
    )
    simulate(None, d, settings)
    return d


def config_for(star: Path, out: Path, **over) -> RunConfig:
    c = load_config_file(ROOT / "examples" / "demo.toml")
    for k, v in {"source.path": str(star), "output_dir": str(out), **SMALL, **over}.items():
        c = apply_override(c, k, v)
    return c


def test_rotation_grid_is_near_uniform_and_local_grid_is_small():
    R = so3_grid(300, 24)
    assert R.shape == (7200, 3, 3)
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=R.dtype).expand(7200, 3, 3), atol=1e-9)
    # any random rotation has a grid neighbour within about the grid spacing
    q = torch.linalg.qr(
        torch.randn(200, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    )[0]
    q = q * torch.linalg.det(q).sign()[:, None, None]
    d = geodesic_distance_deg(q[:, None].expand(-1, 7200, -1, -1).reshape(-1, 3, 3), R.repeat(200, 1, 1))
    nearest = d.reshape(200, 7200).min(1).values
    assert nearest.max() < grid_spacing_deg(300, 24)
    loc = local_rotations(2.0, 1)
    assert loc.shape == (27, 3, 3) and torch.allclose(loc[0], torch.eye(3, dtype=loc.dtype))
    assert (
        geodesic_distance_deg(loc, torch.eye(3, dtype=loc.dtype).expand(27, 3, 3)).max() < 2.0 * 3**0.5 + 1e-6
    )


def test_pair_errors_equal_direct_squared_errors():
    g = torch.Generator().manual_seed(1)
    Y = torch.randn(5, 7, dtype=torch.complex128, generator=g)
    C = torch.randn(5, 7, dtype=torch.float64, generator=g)
    P = torch.randn(4, 7, dtype=torch.complex128, generator=g)
    direct = (Y[:, None] - C[:, None] * P[None]).abs().pow(2).sum(-1) - Y.abs().pow(2).sum(-1, keepdim=True)
    assert torch.allclose(pair_errors(Y, C, P).double(), direct, atol=1e-4)


def test_default_schedule_solves_a_small_clean_case(clean_case, tmp_path):
    """The shipped configuration (test-sized networks) finds the poses of off-centre particles:
    median rotation error ≤ 5°, median origin error ≤ 0.5 px (up to one translation of the map)."""
    res = run(config_for(clean_case / "particles.star", tmp_path / "run"))
    poses = read_star(res.star_path)
    truth = read_star(clean_case / "particles.star")
    assert abs(truth.shifts_angstrom).mean() > 3.0  # the particles really are off-centre
    pe = pose_errors(
        torch.tensor(poses.rotations),
        torch.tensor(truth.rotations),
        torch.tensor(poses.shifts_angstrom),
        torch.tensor(truth.shifts_angstrom),
        3.0,
    )
    assert pe["rot_median_deg"] <= 5.0, pe
    assert pe["trans_median_px"] <= 0.5, pe
    assert res.metrics["rot_median_deg"] == pytest.approx(pe["rot_median_deg"], abs=1e-3)
    assert (tmp_path / "run" / "map.mrc").is_file()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cryoforge.cli", *args]


def test_search_stage_resumes_after_kill_mid_stage(clean_case, tmp_path):
    """SIGKILL inside the search stage, resume: the same pose table as an uninterrupted run."""
    cfg = config_for(
        clean_case / "particles.star",
        tmp_path / "x",
        **{"schedule.amortize_steps": 0, "schedule.fit_steps": 2},
    )
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(cfg.model_dump_json())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(
        _cli("run", "--config", str(cfg_path), "-d", str(tmp_path / "ref")),
        env=env,
        capture_output=True,
        text=True,
    )
    assert ref.returncode == 0, ref.stderr[-2000:]
    proc = subprocess.Popen(
        _cli("run", "--config", str(cfg_path), "-d", str(tmp_path / "k")),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ck = tmp_path / "k" / "checkpoint.pt"
    deadline = time.time() + 300
    while time.time() < deadline:
        time.sleep(0.5)
        if ck.is_file():
            try:
                it = load_checkpoint(ck)["state"]["stages"].get("search", {}).get("iteration", 0)
            except Exception:
                continue
            if it >= 3:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(ck)["state"]["stages"]["search"]
    assert 3 <= killed_at["iteration"] < 8 or killed_at["refined"] < 2  # killed inside the stage
    res = subprocess.run(
        _cli("run", "--resume", str(tmp_path / "k")), env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = load_checkpoint(tmp_path / "ref" / "checkpoint.pt"), load_checkpoint(ck)
    assert torch.allclose(a["poses"]["rotation"], b["poses"]["rotation"], atol=1e-5)
    assert json.loads((tmp_path / "k" / "metrics.json").read_text())["steps"] == a["state"]["step"]


def test_examples_demo_toml_is_the_shipped_default():
    """``examples/demo.toml`` is the file ``run --demo`` uses; its schedule is the default."""
    from cryoforge.simulation.demo import DEMO_CONFIG, demo_config

    assert (ROOT / "examples" / "demo.toml").read_text() == DEMO_CONFIG.read_text()
    cfg = demo_config(Path("demo_run"))
    assert cfg.schedule.name == RunConfig().schedule.name == "abinit"
    assert cfg.train.max_time_s is None  # budgets in steps and iterations, not seconds


def test_simulate_demo_makes_the_run_demo_dataset(tmp_path):
    """``cryoforge simulate --demo`` uses the settings of ``run --demo`` (5,000 particles, 15,000 Å)."""
    from dataclasses import asdict

    from click.testing import CliRunner

    from cryoforge.cli import cli
    from cryoforge.simulation.demo import DEMO_SETTINGS

    r = CliRunner().invoke(cli, ["simulate", "--demo", "--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "d" / "simulation.json").read_text())["settings"]
    want = asdict(SimulationSettings(**DEMO_SETTINGS))
    assert got == want
    assert len(read_star(tmp_path / "d" / "particles.star")) == 5000
