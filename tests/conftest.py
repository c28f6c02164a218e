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
