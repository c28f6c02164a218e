"""``cryoforge infer``: poses for a whole dataset from a trained run's encoder."""

from __future__ import annotations

from pathlib import Path

import click

from cryoforge.commands.common import plugins_dir_option, subset_options


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--particles", type=click.Path(), help="particles to predict (default: the run's)")
@click.option(
    "--out", "out_star", type=click.Path(), help="output .star (default RUN_DIR/inferred_poses.star)"
)
@click.option("--batch-size", default=512, show_default=True)
@subset_options
@plugins_dir_option
@click.option("--overwrite", is_flag=True, help="replace an existing --out (never an input)")
@click.option(
    "--average-views/--single-view",
    default=True,
    show_default=True,
    help="average the encoder's poses over the 8 turned and mirrored copies of each image",
)
@click.option(
    "--recentre/--one-pass",
    default=True,
    show_default=True,
    help="read each image a second time, centred by the first pass's origin (an encoder trained with "
    "the amortize stage's recentre, the default); --one-pass: once (twice as fast, less accurate "
    "off-centre: 7.3 vs 5.5 deg on the off-centre demo)",
)
@click.option(
    "--refine",
    is_flag=True,
    help="refine every predicted pose by a local search at full size against the run's map.mrc "
    "(semi-amortized: about 3x the time of one encoder pass at L=32, far more accurate)",
)
@click.option(
    "--exact-volume",
    is_flag=True,
    help="render the views the loss chooses among from the volume itself, not from its samples on a "
    "grid twice as fine (slower: ~5x at L=64 on a CPU; the same view for ~97 % of particles; "
    "always above 128 px)",
)
def infer(
    run_dir: str,
    particles: str | None,
    out_star: str | None,
    batch_size: int,
    ind: str | None,
    first: int | None,
    plugins_dirs: tuple[str, ...],
    overwrite: bool,
    average_views: bool,
    recentre: bool,
    refine: bool,
    exact_volume: bool,
) -> None:
    """Predict poses for a whole dataset with a trained encoder (no gradients, dataset order).

    The star keeps every column of the input; a cryoSPARC input also gets a .cs next to it.
    """
    import time

    from cryoforge.engine.infer import infer_run
    from cryoforge.errors import ConfigError

    if batch_size < 1:
        raise ConfigError(f"--batch-size: must be at least 1 (got {batch_size})")
    start = time.time()
    path = infer_run(
        Path(run_dir),
        particles,
        out_star,
        batch_size,
        ind,
        first,
        list(plugins_dirs),
        overwrite=overwrite,
        average_views=average_views,
        recentre=recentre,
        refine=refine,
        exact_volume=exact_volume,
    )
    cs = path.with_suffix(".cs")
    click.echo(f"wrote {path}" + (f" and {cs}" if cs.is_file() and cs.stat().st_mtime >= start - 1 else ""))
