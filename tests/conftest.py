"""Shared fixtures. Real reference files are read from ../shared/data (skipped when absent)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CRYOFORGE_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The fixture folder ``../shared/data``; tests using it skip when it is absent."""
    if not (SHARED / "README.md").is_file():
        pytest.skip(f"reference fixtures not found at {SHARED} (set CRYOFORGE_SHARED_DATA)")
    return SHARED


@pytest.fixture(scope="session")
def cryodrgn(shared_data: Path) -> Path:
    return shared_data / "cryodrgn"


@pytest.fixture(scope="session")
def example_plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``plugins/cryoforge-example`` as pip installs it (wheel metadata and entry point).

    Installed with ``--target`` rather than into the running environment: an interpreter that is
    already running never sees a distribution installed under it, so discovery is checked by a fresh
    interpreter with this folder on ``PYTHONPATH``. No network: ``--no-build-isolation`` builds with
    the setuptools of the test extra, ``--no-deps`` reuses the cryoforge of this environment.
    """
    site = tmp_path_factory.mktemp("example-plugin-site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(ROOT / "plugins" / "cryoforge-example"),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (site / "cryoforge_example").is_dir()
    return site


@pytest.fixture(scope="session")
def registry():
    from cryoforge.plugins import load_registry

    return load_registry()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small simulated dataset shared by the session (read-only by convention)."""
    from cryoforge.testing import write_tiny_dataset

    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def offcentre_clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4AKE, 1,200 particles, L=32, 3 Å/px, CTF, noise-free, origins σ = 2 px (simulated once)."""
    from cryoforge.simulation.simulate import SimulationSettings, simulate

    d = tmp_path_factory.mktemp("offcentre_clean")
    settings = SimulationSettings(
        n_particles=1200, snr=None, seed=5, defocus_median_angstrom=15000, shift_std_angstrom=6.0
    )
    simulate(None, d, settings)
    return d


@pytest.fixture
def demo_search_run():
    """``run(data, out, search)``: ``examples/demo.toml`` on ``data``'s particles with the search
    options ``search``, 20 fit steps, no encoder, scored against ``data``'s map; returns the run's
    config (already run)."""
    from cryoforge.config import apply_override, load_config_file
    from cryoforge.engine.run import run

    def _run(data: Path, out: Path, search: dict):
        c = load_config_file(ROOT / "examples" / "demo.toml")
        over = {
            "source.path": str(data / "particles.star"),
            "output_dir": str(out),
            "schedule.fit_steps": 20,
            "schedule.amortize_steps": 0,
            "schedule.search": search,
            "volume.hidden_dim": 32,
            "train.tensorboard": False,
            "train.progress": False,
            "ground_truth_map": str(data / "map.mrc"),
        }
        for k, v in over.items():
            c = apply_override(c, k, v)
        run(c)
        return c

    return _run


@pytest.fixture
def random_spectra():
    """``make(n, size, seed)``: search spectra of ``n`` random complex images at ``size`` px, CTF-free."""
    import torch

    from cryoforge.engine.search_scoring import SearchSpectra
    from cryoforge.ops.grids import half_plane_query

    def _make(n: int, size: int, seed: int) -> SearchSpectra:
        sp = object.__new__(SearchSpectra)
        sp.size = size
        sp.flat, sp.freqs = half_plane_query(size)
        g = torch.Generator().manual_seed(seed)
        m = len(sp.freqs)
        sp.Y = torch.complex(torch.randn(n, m, generator=g), torch.randn(n, m, generator=g))
        sp.C, sp.radius_px = None, sp.freqs.norm(dim=1) * size
        return sp

    return _make
