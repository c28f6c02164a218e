"""``cryoforge symmetry``: the rotation axes of a map, a point-group verdict, its envelope; and
optionally the map with a point group imposed."""

from __future__ import annotations

import click


def _group_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """The group's canonical name (``d2`` → ``D2``), or a one-line usage error."""
    if value is None:
        return None
    from cryoforge.ops.symmetry import canonical_group_name

    try:
        name = canonical_group_name(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if param.name == "group" and name[0] not in "CD":
        raise click.BadParameter(f"the axis search gives a verdict on C<n> and D<n>, not {name}")
    return name


@click.command()
@click.argument("map_path", type=click.Path())
@click.option(
    "--group",
    default="D2",
    show_default=True,
    callback=_group_option,
    help="point group to check: C<n> or D<n> (RELION's frame: n-fold about z, two-fold about x)",
)
@click.option(
    "--resolution",
    "resolution_angstrom",
    type=click.FloatRange(min=0, min_open=True),
    help="low-pass the map to this resolution (Å) before the search",
)
@click.option(
    "--min-correlation",
    default=0.85,
    show_default=True,
    type=click.FloatRange(-1, 1),
    help="an axis counts when the map correlates this well with its rotated copy",
)
@click.option(
    "--angle-tolerance",
    "angle_tolerance_deg",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0, 45),
    help="degrees from perpendicular allowed between the axes of a D group",
)
@click.option(
    "--envelope-fraction",
    default=0.15,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="envelope threshold as a fraction of the map's maximum",
)
@click.option(
    "--envelope-sigma",
    type=float,
    help="envelope threshold in standard deviations above the mean (instead of --envelope-fraction)",
)
@click.option("--json", "json_path", type=click.Path(), help="write the axes, verdict and envelope here")
@click.option(
    "--impose",
    callback=_group_option,
    help="write the map averaged over this point group (C<n>, D<n>, T, O) to --out",
)
@click.option("--out", "out_path", type=click.Path(), help="the symmetrized map (.mrc), with --impose")
@click.option("--overwrite", is_flag=True, help="replace --json / --out files already there")
def symmetry(
    map_path,
    group,
    resolution_angstrom,
    min_correlation,
    angle_tolerance_deg,
    envelope_fraction,
    envelope_sigma,
    json_path,
    impose,
    out_path,
    overwrite,
) -> None:
    """Find a map's two-fold (and n-fold) axes, say whether they make --group, give its envelope in Å.

    Each axis is scored by the correlation of the map (centred on its centre of mass, inside a
    sphere) with its copy rotated about that axis. With --impose and --out the map averaged over
    that group about the box centre is written (voxel size kept).
    """
    if (impose is None) != (out_path is None):
        raise click.UsageError("--impose and --out go together")
    from cryoforge.io.outputs import refuse_existing, refuse_input_overlap
    from cryoforge.io.writable import check_writable_file

    for path, option in ((json_path, "--json"), (out_path, "--out")):
        if path is not None:
            refuse_input_overlap([path], [map_path], option)
            refuse_existing(path, option, overwrite)
            check_writable_file(path, option)

    import torch

    from cryoforge.io.mrc import read_map
    from cryoforge.metrics.symmetry import analyse_symmetry

    data, voxel = read_map(map_path)
    voxel = voxel if voxel > 0 else 0.0
    if resolution_angstrom is not None and voxel <= 0:
        raise click.UsageError(
            f"{map_path} has no voxel size in its header, so --resolution (Å) cannot be used"
        )
    volume = torch.from_numpy(data)
    report = analyse_symmetry(
        volume,
        voxel,
        group,
        resolution_angstrom,
        min_correlation,
        angle_tolerance_deg,
        None if envelope_sigma is not None else envelope_fraction,
        envelope_sigma,
    )
    _print_report(report, voxel)
    if json_path is not None:
        from cryoforge.metrics.summary import write_json

        write_json(
            json_path,
            {"map": str(map_path), "voxel_size_angstrom": voxel, "resolution_angstrom": resolution_angstrom}
            | report.as_dict(),
        )
    if impose is not None:
        from cryoforge.io.mrc import write_mrc
        from cryoforge.ops.symmetry import symmetrize_volume

        write_mrc(out_path, symmetrize_volume(volume, impose).numpy(), voxel)
        click.echo(f"{impose}-symmetrized map written to {out_path} (about the box centre)")


def _fmt_dir(d: tuple[float, float, float]) -> str:
    return "(" + ", ".join(f"{c:+.3f}" for c in d) + ")"


def _print_report(report, voxel: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    for axes, title in ((report.twofold, "two-fold axes"), (report.nfold, "n-fold axes")):
        if not axes and title == "n-fold axes":
            continue
        order = axes[0].order if axes else 2
        table = Table("#", "direction (x, y, z)", "correlation", title=f"{title} (order {order}), best first")
        for i, a in enumerate(axes):
            table.add_row(str(i), _fmt_dir(a.direction), f"{a.correlation:.3f}")
        console.print(table)
    v = report.verdict
    console.print(f"{v.group}: {'yes' if v.consistent else 'no'} ({v.reason})", highlight=False)
    for i, j, angle in v.angles_deg:
        console.print(
            f"  angle between axes {_fmt_dir(v.axes[i].direction)} and {_fmt_dir(v.axes[j].direction)}: "
            f"{angle:.1f}°",
            highlight=False,
        )
    e = report.envelope
    unit = "Å" if voxel > 0 else "voxels"
    console.print(
        "envelope along its principal axes: "
        + " × ".join(f"{x:.1f}" for x in e.extents_angstrom)
        + f" {unit} ({e.n_voxels} voxels above {e.threshold:.4g})",
        highlight=False,
    )
