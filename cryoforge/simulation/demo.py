"""The built-in demo: adenylate kinase (PDB 4AKE) simulated at L=32, sized for a laptop CPU."""

from __future__ import annotations

from pathlib import Path

from cryoforge.config import RunConfig
from cryoforge.simulation.simulate import SimulationSettings, simulate

DEMO_SETTINGS = dict(
    n_particles=5000,
    box_size=32,
    pixel_size_angstrom=3.0,
    snr=1.0,
    shift_std_angstrom=0.0,
    defocus_median_angstrom=15000.0,
    seed=0,
)


DEMO_CONFIG = Path(__file__).parent.parent / "data" / "demo.toml"
"""The shipped default configuration (``examples/demo.toml`` is the same file)."""


def demo_config(run_dir: Path) -> RunConfig:
    """``demo.toml`` on the demo dataset in ``run_dir/data``, with the ground truth for metrics."""
    from cryoforge.config import load_config_file

    data = run_dir / "data"
    config = load_config_file(DEMO_CONFIG)
    source = config.source.model_copy(update={"options": {"path": str(data / "particles.star")}})
    return config.model_copy(
        update={"source": source, "output_dir": str(run_dir), "ground_truth_map": str(data / "map.mrc")}
    )


def claim_demo_run(run_dir: Path, data_dir: Path, overwrite: bool = False) -> Path:
    """Mark ``run_dir`` as the demo's run, then simulate the demo dataset into ``data_dir``.

    The folder is checked (a non-empty folder that is not a run, nor holds only the demo data,
    is refused; a finished run needs ``overwrite``) and marked before the simulation writes
    into it, so that ``run --demo`` afterwards recognises its own folder.
    """
    from cryoforge.io.outputs import RunLock, check_run_dir, run_dir_kind, write_run_marker
    from cryoforge.simulation.simulate import OUTPUT_NAMES

    own = [data_dir / n for n in OUTPUT_NAMES]  # an earlier version's demo data, unmarked
    check_run_dir(run_dir, resume=False, overwrite=overwrite, inputs=own)
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir):
        if run_dir_kind(run_dir) != "run":
            write_run_marker(run_dir)
        return ensure_demo_data(data_dir)


def ensure_demo_data(data_dir: Path) -> Path:
    """Simulate the demo dataset into ``data_dir`` unless it is already there."""
    star = data_dir / "particles.star"
    if not star.is_file():
        print(f"simulating the demo dataset (adenylate kinase, 4AKE) into {data_dir} ...")
        simulate(None, data_dir, SimulationSettings(**DEMO_SETTINGS))
    return star
