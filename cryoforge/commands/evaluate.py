"""``cryoforge evaluate``: FSC, resolution and pose errors of files on disk."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("map_path", type=click.Path())
@click.option(
    "--ref", "ref_path", type=click.Path(), help="ground-truth map (aligned: hands, rotation, shift)"
)
@click.option("--half2", "half2_path", type=click.Path(), help="second half map (FSC at 0.143, no alignment)")
@click.option(
    "--mask",
    default="none",
    show_default=True,
    help="with --half2: 'auto' (the half maps' average at 15 Å, threshold 0.2 of its maximum, "
    "dilated 6 Å, soft edge to 14 Å), 'none', or an .mrc mask; the masked FSC is corrected by "
    "phase randomisation and the unmasked one reported beside it",
)
@click.option("--poses", "poses_path", type=click.Path(), help="predicted poses (.star)")
@click.option("--gt-poses", "gt_poses_path", type=click.Path(), help="ground-truth poses (.star)")
@click.option(
    "-d",
    "--output-dir",
    "--out",
    "out_dir",
    default="evaluation",
    show_default=True,
    type=click.Path(),
    help="output folder (fsc.png, metrics.json)",
)
@click.option("--overwrite", is_flag=True, help="replace fsc.png / metrics.json already in the folder")
def evaluate(map_path, ref_path, half2_path, mask, poses_path, gt_poses_path, out_dir, overwrite) -> None:
    """FSC and resolution (0.5 / 0.143), pose errors; prints a table, writes fsc.png and metrics.json."""
    from cryoforge.io.writable import check_writable
    from cryoforge.metrics.files import evaluate_files

    check_writable(out_dir, "--output-dir")
    metrics = evaluate_files(
        map_path,
        ref_path,
        half2_path,
        poses_path,
        gt_poses_path,
        Path(out_dir),
        overwrite=overwrite,
        mask=mask,
    )
    from rich.console import Console
    from rich.table import Table

    table = Table("metric", "value", title="cryoforge evaluate")
    from cryoforge.metrics.summary import metric_rows

    for k, v in metric_rows(metrics):
        table.add_row(k, v)
    Console(width=120).print(table)
