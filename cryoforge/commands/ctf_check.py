"""``cryoforge ctf-check``: the particles' defocus against their Thon rings, per micrograph."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("ctf-check")
@click.argument("particles", type=click.Path())
@click.option(
    "--out",
    "out_path",
    type=click.Path(),
    help="write PARTICLES (.star) again with DefocusU/V of each disagreeing micrograph scaled to "
    "its rings (astigmatism ratio and angle kept; agreeing micrographs and those without rings as "
    "they were)",
)
@click.option(
    "--plot", "plot_path", type=click.Path(), help="ring correlation against defocus per micrograph (.png)"
)
@click.option("--json", "json_path", type=click.Path(), help="the table as JSON")
@click.option(
    "--max-per-micrograph",
    default=400,
    show_default=True,
    type=click.IntRange(min=30),
    help="particles read per micrograph (a random sample above it)",
)
@click.option(
    "--datadir",
    type=click.Path(),
    help="folder the image paths of PARTICLES are relative to (default: as cryoforge run finds them)",
)
@click.option("--overwrite", is_flag=True, help="replace --out / --plot / --json files already there")
def ctf_check(
    particles: str,
    out_path: str | None,
    plot_path: str | None,
    json_path: str | None,
    max_per_micrograph: int,
    datadir: str | None,
    overwrite: bool,
) -> None:
    """Check the CTF metadata of PARTICLES (.star or .cs) against the particles' own Thon rings.

    The power spectra of each micrograph's particles (rlnMicrographName; else each stack file)
    are pooled, and their rings are compared with CTF² at the metadata's defocus × k for k from
    0.1 to 10. A ratio far from 1 where the rings stand above noise means the defocus is wrong
    (for example CTFFIND run at another pixel size), and every map beyond the first CTF zero
    would be wrong with it. No map and no poses are needed. Prints one row per micrograph and a
    verdict; exit code 0 either way.

    \b
    cryoforge ctf-check good.star --plot ctf_check.png
    cryoforge ctf-check good.star --out good_ctf.star   # then: cryoforge run --particles good_ctf.star
    """
    from cryoforge.errors import InputFileError
    from cryoforge.io.outputs import refuse_existing, refuse_input_overlap
    from cryoforge.io.writable import check_writable_file

    src = Path(particles)
    if out_path is not None and src.suffix.lower() != ".star":
        raise InputFileError(src, "--out rewrites a .star file; this input is not one", "--out")
    for path, option in ((out_path, "--out"), (plot_path, "--plot"), (json_path, "--json")):
        if path is not None:
            refuse_input_overlap([path], [particles], option)
            refuse_existing(path, option, overwrite)
            check_writable_file(path, option)

    from cryoforge.engine.ctf_check import check_particle_ctf, plot_ctf_check
    from cryoforge.plugins import load_registry
    from cryoforge.sources import SUFFIX_TO_SOURCE

    name = SUFFIX_TO_SOURCE.get(src.suffix.lower())
    if name not in ("star", "cs"):
        raise InputFileError(src, "expected a .star or .cs particle file (with CTF values)", "PARTICLES")
    opts = {"path": str(src), "normalize": False}
    if datadir is not None:
        opts["datadir"] = datadir
    source = load_registry().build("source", name, opts)
    if source.ctf is None:
        raise InputFileError(src, "no CTF values (defocus) to check", "rlnDefocusU")

    from cryoforge.io.console_progress import ParticleProgress

    bar: ParticleProgress | None = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = ParticleProgress("ctf-check", total)
        bar.update(done)

    check = check_particle_ctf(source, max_per_micrograph, progress=progress)
    if bar is not None:
        bar.close()
    _print_table(check)
    click.echo(check.summary())
    if plot_path is not None:
        plot_ctf_check(check, plot_path)
        click.echo(f"wrote {plot_path}")
    if json_path is not None:
        from cryoforge.metrics.summary import write_json

        write_json(json_path, _as_dict(check, particles))
        click.echo(f"wrote {json_path}")
    if out_path is not None:
        from cryoforge.engine.ctf_check import corrected_star_document
        from cryoforge.io.star_document import write_star_document

        doc, changed = corrected_star_document(src, source, check)
        write_star_document(out_path, doc)
        click.echo(f"wrote {out_path} ({changed} particles' defocus changed)")


def _as_dict(check, particles: str) -> dict:
    return {
        "particles": str(particles),
        "box": check.box,
        "pixel_size_angstrom": check.pixel_angstrom,
        "summary": check.summary(),
        "disagrees": check.disagrees,
        "groups": [
            {
                "name": g.name,
                "particles": len(g.rows),
                "metadata_defocus_angstrom": g.defocus_angstrom,
                "ring_defocus_angstrom": g.fitted_defocus_angstrom if g.fit.detected else None,
                "ratio": g.fit.best_scale,
                "ring_correlation": g.fit.best_correlation,
                "noise_threshold": g.fit.null_threshold,
                "verdict": g.verdict,
            }
            for g in check.groups
        ],
    }


def _print_table(check) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "micrograph",
        "particles",
        "metadata defocus (Å)",
        "rings (Å)",
        "ratio",
        "ring corr.",
        "noise 99 %",
        "verdict",
        title="CTF defocus against the particles' Thon rings",
    )
    for g in check.groups:
        fitted = f"{g.fitted_defocus_angstrom:,.0f}" if g.fit.detected else "—"
        table.add_row(
            Path(g.name).name,
            str(len(g.rows)),
            f"{g.defocus_angstrom:,.0f}",
            fitted,
            f"{g.fit.best_scale:.2f}" if g.fit.detected else "—",
            f"{g.fit.best_correlation:.2f}",
            f"{g.fit.null_threshold:.2f}",
            g.verdict,
        )
    Console(width=140).print(table)
