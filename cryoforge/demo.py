"""The built-in demo: adenylate kinase (PDB 4AKE) simulated at L=32, sized for a laptop CPU."""

from __future__ import annotations

from pathlib import Path

from cryoforge.config import ComponentConfig, RunConfig, TrainConfig
from cryoforge.simulate import SimulationSettings, simulate

DEMO_SETTINGS = dict(
    n_particles=5000,
    box_size=32,
    pixel_size_angstrom=3.0,
    snr=1.0,
    shift_std_angstrom=0.0,
    defocus_median_angstrom=15000.0,
    seed=0,
)


def demo_config(run_dir: Path) -> RunConfig:
    """The cryoAI pipeline with CPU-sized encoder/volume and a ~10 minute budget."""
    data = run_dir / "data"
    return RunConfig(
        source=ComponentConfig(name="star", options={"path": str(data / "particles.star")}),
        encoder=ComponentConfig(
            name="vgg", options={"channels": [16, 32, 64, 64], "head_hidden": [256, 128]}
        ),
        volume=ComponentConfig(name="fouriernet", options={"hidden_dim": 64}),
        imaging=ComponentConfig(name="cryoai"),
        loss=ComponentConfig(name="symmetrized"),
        train=TrainConfig(epochs=0, max_time_s=540, batch_size=32, lr_encoder=1e-3, export_every_s=60),
        output_dir=str(run_dir),
        ground_truth_map=str(data / "map.mrc"),
    )


def ensure_demo_data(data_dir: Path) -> Path:
    """Simulate the demo dataset into ``data_dir`` unless it is already there."""
    star = data_dir / "particles.star"
    if not star.is_file():
        print(f"simulating the demo dataset (adenylate kinase, 4AKE) into {data_dir} ...")
        simulate(None, data_dir, SimulationSettings(**DEMO_SETTINGS))
    return star
