"""``cryoforge simulate``: particles from a map or an atomic model (or the demo dataset)."""

from __future__ import annotations

from pathlib import Path

import click

from cryoforge.errors import InputFileError


@click.command()
@click.argument("input_path", required=False, type=click.Path())
@click.option(
    "-d", "--output-dir", "--out", "out_dir", required=True, type=click.Path(), help="output folder"
)
@click.option(
    "--demo",
    is_flag=True,
    help="the dataset of `cryoforge run --demo` (4AKE, 5,000 particles, L=32, 3 Å/px, SNR 1, 15,000 Å)",
)
@click.option(
    "--like",
    "like_path",
    type=click.Path(),
    help="copy poses, origins, CTF, box and pixel size from this .star/.cs",
)
@click.option("-n", "--n-particles", default=None, type=click.IntRange(1), help="[default: 1000]")
@click.option("--box-size", default=32, show_default=True, type=click.IntRange(8), help="L (atomic models)")
@click.option(
    "--pixel-size",
    default=3.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Å/px (atomic models)",
)
@click.option(
    "--snr", default=1.0, show_default=True, type=float, help="var(signal)/var(noise); <=0: no noise"
)
@click.option("--shift-std", default=0.0, show_default=True, type=float, help="Gaussian shift σ in Å")
@click.option("--defocus", default=None, type=float, help="median defocus in Å [default: 20000]")
@click.option("--no-ctf", is_flag=True, help="do not apply a CTF (with --like: ignore the table's)")
@click.option(
    "--wrap",
    is_flag=True,
    help="form images in the box itself, so shifts and the CTF's spread wrap round its edge (as "
    "relion_project does); default: a box twice as wide, cropped, so large origins leave the box",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--overwrite", is_flag=True, help="replace a dataset already in --out")
def simulate(
    input_path,
    out_dir,
    demo,
    like_path,
    n_particles,
    box_size,
    pixel_size,
    snr,
    shift_std,
    defocus,
    no_ctf,
    wrap,
    seed,
    overwrite,
) -> None:
    """Simulate particles from an .mrc map or a .pdb/.cif model (ground-truth poses in the .star).

    Images follow RELION's conventions: the molecule is white, and a particle whose star says
    origin ``o`` sits at ``−o``. With ``--like``, the particles copy an existing table.
    """
    from cryoforge.simulation.demo import DEMO_SETTINGS
    from cryoforge.simulation.simulate import SimulationSettings, read_like_table
    from cryoforge.simulation.simulate import simulate as do_simulate

    if not input_path and not demo:
        raise click.UsageError("give an INPUT_PATH (.mrc/.pdb/.cif) or --demo")
    if input_path and not Path(input_path).exists():
        raise InputFileError(input_path, "input file not found", "INPUT_PATH")
    from cryoforge.io.outputs import refuse_existing, refuse_input_overlap, run_dir_kind
    from cryoforge.simulation.simulate import OUTPUT_NAMES

    if run_dir_kind(out_dir) in ("run", "legacy"):
        raise InputFileError(
            out_dir, "is a cryoforge run folder; simulate into another folder", "--output-dir"
        )
    outputs = [Path(out_dir) / n for n in OUTPUT_NAMES]
    refuse_input_overlap(outputs, [input_path, like_path], "--output-dir")
    for p in outputs:
        refuse_existing(p, "--output-dir", overwrite)
    from cryoforge.io.writable import check_writable

    check_writable(out_dir, "--output-dir")
    like = read_like_table(like_path) if like_path else None
    base = dict(DEMO_SETTINGS) if demo else {"n_particles": 1000, "defocus_median_angstrom": 20000.0}
    s = SimulationSettings(
        n_particles=n_particles or base["n_particles"],
        box_size=box_size,
        pixel_size_angstrom=pixel_size,
        snr=snr if snr > 0 else None,
        shift_std_angstrom=shift_std,
        defocus_median_angstrom=defocus or base["defocus_median_angstrom"],
        apply_ctf=not no_ctf,
        seed=seed,
        pad=not wrap,
    )
    if demo:
        s.box_size, s.pixel_size_angstrom = DEMO_SETTINGS["box_size"], DEMO_SETTINGS["pixel_size_angstrom"]
    r = do_simulate(None if demo else input_path, out_dir, s, like=like)
    click.echo(
        f"wrote {r.star} and {r.stack} ({s.n_particles} particles, L={s.box_size}, "
        f"{s.pixel_size_angstrom:.3g} Å/px, CTF {'on' if s.apply_ctf else 'off'}, "
        f"realised SNR {r.realised_snr if r.realised_snr else 'inf'})"
    )
