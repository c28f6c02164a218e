"""Several processes (torchrun, gloo on CPU) split every stage's particles and agree with one process."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cryoforge.config import apply_override, load_config_file
from cryoforge.engine.checkpoint import load_checkpoint
from cryoforge.engine.collective import Collective
from cryoforge.engine.search import search_rows
from cryoforge.io.star import read_star
from cryoforge.ops.rotations import geodesic_distance_deg
from cryoforge.simulation.simulate import SimulationSettings, simulate
from cryoforge.testing import torchrun_command

ROOT = Path(__file__).resolve().parents[1]


def test_shards_cover_the_rows_once_in_order():
    for n in (0, 1, 5, 7, 1000):
        for world in (1, 2, 3, 4):
            parts = [Collective(r, world).shard(n) for r in range(world)]
            assert parts[0].start == 0 and parts[-1].stop == n
            assert all(a.stop == b.start for a, b in itertools.pairwise(parts))
            sizes = [p.stop - p.start for p in parts]
            assert max(sizes) - min(sizes) <= 1


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    """4AKE, 1,200 particles, L=32, CTF, SNR 1, origins σ = 2 px."""
    d = tmp_path_factory.mktemp("ddp_case")
    simulate(
        None,
        d,
        SimulationSettings(
            n_particles=1200, snr=1.0, seed=11, defocus_median_angstrom=15000, shift_std_angstrom=6.0
        ),
    )
    return d


def _config_file(case: Path, tmp: Path) -> Path:
    c = load_config_file(ROOT / "examples" / "demo.toml")
    for k, v in {
        "source.path": str(case / "particles.star"),
        "encoder.channels": [8, 16],
        "encoder.head_hidden": [32],
        "volume.hidden_dim": 32,
        "schedule.fit_steps": 6,
        "schedule.amortize_steps": 6,
        "schedule.subset": 800,
        "schedule.search": {"iterations": 5, "refine_steps_deg": [2.0, 1.0]},
        "schedule.refine": {"refine_steps_deg": [2.0], "fit_steps": 4},
        "train.batch_size": 16,
        "train.tensorboard": False,
        "train.progress": False,
    }.items():
        c = apply_override(c, k, v)
    path = tmp / "config.json"
    path.write_text(c.model_dump_json())
    return path


def _run(cmd: list[str], threads: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_processes_find_the_poses_one_process_finds(case, tmp_path):
    """torchrun --nproc_per_node 2 against one process, subset search → fit → amortize → infer →
    refine: the searched particles' poses agree (median ≤ 0.1°, origins within 0.05 px), every
    stage ran on both processes' shares, and every particle has a pose."""
    cfg = _config_file(case, tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, "-m", "cryoforge.cli", "run", "--config", str(cfg), "-d", str(one)], "2")
    _run(
        torchrun_command("run", "--config", str(cfg), "-d", str(two)),
        "1",
    )
    a, b = read_star(one / "poses.star"), read_star(two / "poses.star")
    assert len(a.rotations) == len(b.rotations) == 1200
    rows = search_rows(1200, 800, 0)
    assert rows is not None
    searched = rows.numpy()
    d = geodesic_distance_deg(
        torch.as_tensor(a.rotations[searched], dtype=torch.float64),
        torch.as_tensor(b.rotations[searched], dtype=torch.float64),
    )
    assert float(d.median()) <= 0.1, float(d.median())
    shift = np.linalg.norm(a.shifts_angstrom[searched] - b.shifts_angstrom[searched], axis=1) / 3.0
    assert float(np.median(shift)) <= 0.05
    ck = load_checkpoint(two / "checkpoint.pt")["state"]["stages"]
    assert ck["infer"]["done"] == 400 and ck["refine"]["refined"] == 1 and ck["amortize"]["step"] == 6
