"""``cryoforge select-classes``: the particles of chosen 2D classes, as a STAR subset or an ``--ind`` file."""

from __future__ import annotations

from pathlib import Path

import click

SUFFIX_HELP = ".star (a subset of the particle file) or .txt/.pkl (0-based rows for --ind)"


def _classes(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    from cryoforge.io.class_selection import parse_class_list

    try:
        return parse_class_list(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("select-classes")
@click.argument("classification", type=click.Path())
@click.option(
    "--classes",
    required=True,
    callback=_classes,
    metavar="N,N,...",
    help="2D class numbers to keep, as RELION numbers them (from 1), separated by commas",
)
@click.option(
    "--particles",
    type=click.Path(),
    default=None,
    help="STAR file to select from, matched by rlnImageName (default: CLASSIFICATION itself)",
)
@click.option("--out", "out_path", required=True, type=click.Path(), help=f"output: {SUFFIX_HELP}")
@click.option(
    "--origins",
    is_flag=True,
    help="with a .star --out: copy each particle's 2D alignment from CLASSIFICATION "
    "(rlnOriginX/YAngst in Å, rlnAngleRot/Tilt/Psi in degrees), for "
    "-o schedule.search.initial_origins input",
)
@click.option("--overwrite", is_flag=True, help="replace an existing --out (never an input)")
def select_classes(
    classification: str,
    classes: tuple[int, ...],
    particles: str | None,
    out_path: str,
    origins: bool,
    overwrite: bool,
) -> None:
    """Keep the particles of chosen 2D classes, as before ab initio.

    CLASSIFICATION is the _data.star of a RELION Class2D job (rlnClassNumber per particle). The
    selected particles are found in --particles by rlnImageName (image number and stack file) and
    written in that file's order. A .star --out is a subset of --particles with every table and
    column as written (optics table, pixel size in Å, defocus in Å, angles in degrees); a .txt or
    .pkl --out lists the particles' 0-based rows in --particles, for --ind. Prints how many
    particles of how many were selected, per class.

    \b
    cryoforge select-classes Class2D/job010/run_it025_data.star --classes 26,28,50,38,47,22 \\
        --particles Extract/job009/particles.star --out good.star
    cryoforge run --config examples/demo.toml --particles good.star -d runs/good
    """
    from cryoforge.errors import InputFileError
    from cryoforge.io.class_selection import (
        OUTPUT_SUFFIXES,
        select_class_particles,
        selection_document,
        write_index_file,
    )
    from cryoforge.io.outputs import refuse_existing, refuse_input_overlap
    from cryoforge.io.star_document import write_star_document
    from cryoforge.io.writable import check_writable_file

    out = Path(out_path)
    suffix = out.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise InputFileError(out, f"unknown output type {suffix or '(none)'!r}; give {SUFFIX_HELP}", "--out")
    if origins and suffix != ".star":
        raise click.UsageError("--origins needs a .star --out (an index file holds no origins)")
    refuse_input_overlap([out], [classification, particles], "--out")
    refuse_existing(out, "--out", overwrite)
    check_writable_file(out, "--out")

    sel = select_class_particles(Path(classification), classes, Path(particles) if particles else None)
    per_class = ", ".join(f"{c}: {sel.counts[c]:,}" for c in sel.classes)
    n = len(sel.rows)
    click.echo(
        f"selected {n:,} of {sel.n_classified:,} particles in {len(sel.classes)} "
        f"class{'es' if len(sel.classes) > 1 else ''} ({per_class})"
    )
    target = Path(particles) if particles else Path(classification)
    if suffix == ".star":
        write_star_document(out, selection_document(sel, origins))
        what = f"{n:,} of the {sel.n_target:,} particles of {target.name}"
        if origins:
            what += f", with the 2D origins of {Path(classification).name}"
    else:
        comment = (
            f"cryoforge select-classes: classes {','.join(map(str, sel.classes))} of {classification}\n"
            f"0-based rows of {target} ({n} of {sel.n_target})"
        )
        write_index_file(out, sel.rows, comment)
        what = f"0-based rows of {target.name}, for --ind"
    click.echo(f"wrote {out} ({what})")
