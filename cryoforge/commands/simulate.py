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
    if like is not None:  # the warnings and refusals of a run on this table
        import numpy as np

        from cryoforge.io.physical import check_physical_values, print_warnings

        ctf = not no_ctf and like.has_ctf and not np.all(like.ctf["voltage_kv"] == 0)
        print_warnings(check_physical_values(like, like.box_size, ctf_in_use=ctf))
    _warn_ignored(demo, like_path, input_path)
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
    box = s.box_size
    if like is not None:
        box = int(like.box_size or box)
    elif input_path and Path(input_path).suffix.lower() in (".mrc", ".map"):
        from cryoforge.io.mrc import stack_info

        box = stack_info(input_path).size
    check_resources(Path(out_dir), len(like) if like is not None else s.n_particles, box)
    r = do_simulate(None if demo else input_path, out_dir, s, like=like)
    click.echo(
        f"wrote {r.star} and {r.stack} ({s.n_particles} particles, L={s.box_size}, "
        f"{s.pixel_size_angstrom:.3g} Å/px, CTF {'on' if s.apply_ctf else 'off'}, "
        f"realised SNR {r.realised_snr if r.realised_snr else 'inf'})"
    )


def _warn_ignored(demo: bool, like_path: str | None, input_path: str | None) -> None:
    """Say which options given on the command line the input makes meaningless."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    given = {
        n
        for n in ("n_particles", "box_size", "pixel_size")
        if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE
    }
    ignored: list[tuple[str, str]] = []
    if demo:
        ignored += [(n, "--demo (L=32, 3 Å/px)") for n in ("box_size", "pixel_size")]
    elif like_path:
        ignored += [(n, f"--like (its table's {n.split('_')[0]})") for n in ("box_size", "pixel_size")]
        ignored += [("n_particles", "--like (one particle per row of its table)")]
    elif input_path and Path(input_path).suffix.lower() in (".mrc", ".map"):
        ignored += [(n, "a map input (the map's box and voxel size)") for n in ("box_size", "pixel_size")]
    for name, why in ignored:
        if name in given:
            flag = "-n" if name == "n_particles" else "--" + name.replace("_", "-")
            click.echo(f"Warning: {flag} is ignored with {why}", err=True)


def check_resources(out_dir: Path, n: int, box: int) -> None:
    """Refuse a simulation whose stack would not fit on the disk of ``out_dir``, or in memory
    (the stack is formed in memory before it is written).

    Raises
    ------
    InputFileError
        Naming ``--n-particles``, with the size needed and the size there is.
    """
    import shutil

    stack = n * box * box * 4 + 1024
    need_disk = stack + n * 400 + box**3 * 4 + (1 << 20)  # the stack, the star, the map, slack
    folder = out_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if need_disk > free:
        raise InputFileError(
            out_dir,
            f"{n} particles of {box} px need about {_size(need_disk)} on disk, {_size(free)} free there; "
            "use fewer particles (-n) or another --out",
            "--n-particles",
        )
    available = _memory_available()
    if available is not None and 2 * stack > available:
        raise InputFileError(
            out_dir,
            f"{n} particles of {box} px need about {_size(2 * stack)} of memory (the stack is formed in "
            f"memory), {_size(available)} available; use fewer particles (-n)",
            "--n-particles",
        )


def _memory_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (``None`` where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"
