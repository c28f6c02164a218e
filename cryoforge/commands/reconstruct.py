"""``cryoforge reconstruct``: a known-pose map by Fourier backprojection."""

from __future__ import annotations

from pathlib import Path

import click

from cryoforge.commands.common import subset_options


@click.command()
@click.argument("particles", type=click.Path())
@click.option("--out", "out_map", required=True, type=click.Path(), help="output .mrc")
@click.option("--poses", "poses_pkl", type=click.Path(), help="cryoDRGN pose .pkl (else poses in the file)")
@click.option("--no-ctf", is_flag=True, help="ignore the CTF")
@subset_options
@click.option("--overwrite", is_flag=True, help="replace an existing --out (never an input)")
def reconstruct(
    particles: str,
    out_map: str,
    poses_pkl: str | None,
    no_ctf: bool,
    ind: str | None,
    first: int | None,
    overwrite: bool,
) -> None:
    """Known-pose reconstruction by Fourier backprojection (a reference, not a learned map)."""
    from cryoforge.engine.reconstruct import reconstruct_file

    path = reconstruct_file(
        Path(particles), Path(out_map), poses_pkl, not no_ctf, ind, first, overwrite=overwrite
    )
    click.echo(f"wrote {path}")
