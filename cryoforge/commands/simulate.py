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
@click.option(
    "--defocus-range",
    nargs=2,
    type=float,
    default=None,
    metavar="MIN MAX",
    help="mean defocus (U+V)/2 uniform between MIN and MAX, in Å, instead of log-normal around --defocus",
)
@click.option(
    "--astigmatism-range",
    nargs=2,
    type=float,
    default=None,
    metavar="MIN MAX",
    help="astigmatism DefocusU − DefocusV uniform between MIN and MAX, in Å, at a DefocusAngle uniform "
    "in [0°, 180°) [default: U − V uniform in ±200 Å, angle in ±180°]",
)
@click.option(
    "--bfactor",
    default=0.0,
    show_default=True,
    type=float,
    help="B-factor envelope exp(−B s²/4) on the signal, B in Å², s in 1/Å (not written to the star)",
)
@click.option(
    "--noise-like",
    type=click.Path(),
    help="coloured noise with the radial power spectrum (in 1/Å) of the background of these real "
    "particles (.star), outside --noise-mask-radius; held at its last value beyond their Nyquist",
)
@click.option(
    "--noise-mask-radius",
    type=float,
    default=None,
    help="radius in Å of the circular particle mask of --noise-like [default: 0.375 × its box side]",
)
@click.option(
    "--noise-falloff",
    type=float,
    default=None,
    metavar="D0",
    help="coloured noise of power ∝ 1/(1 + (s·D0)²), D0 in Å, s in 1/Å: the power halves at "
    "resolution D0 [default: white noise]",
)
@click.option(
    "--contrast-std",
    default=0.0,
    show_default=True,
    type=float,
    help="per-particle contrast scale exp(σ·N(0,1)), log-normal with median 1; σ (no unit) is this "
    "value (written as _cryoforgeContrastScale)",
)
@click.option(
    "--junk-fraction",
    default=0.0,
    show_default=True,
    type=float,
    help="share (0 to <1) of junk images: half pure noise, half --junk-model; flagged 1 in the star "
    "column _cryoforgeJunk, which `cryoforge evaluate` leaves out of pose errors",
)
@click.option(
    "--junk-model",
    type=click.Path(),
    help="the junk molecule: .pdb/.cif, or an .mrc on the dataset's grid, scaled to the map's "
    "integrated density [default: a random blob of Gaussian balls]",
)
@click.option(
    "--float16",
    is_flag=True,
    help="write the stack as float16 (MRC mode 12): half the disk of float32, as RELION 4+ can write; "
    "written in chunks, so memory does not grow with -n",
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
    defocus_range,
    astigmatism_range,
    bfactor,
    noise_like,
    noise_mask_radius,
    noise_falloff,
    contrast_std,
    junk_fraction,
    junk_model,
    float16,
    seed,
    overwrite,
) -> None:
    """Simulate particles from an .mrc map or a .pdb/.cif model (ground-truth poses in the .star).

    Images follow RELION's conventions: the molecule is white, and a particle whose star says
    origin ``o`` sits at ``−o``. With ``--like``, the particles copy an existing table.

    What real data have: a defocus range and astigmatism, a B-factor, coloured noise (measured on
    real particles or a fall-off), a per-particle contrast, junk images. SNR stays
    var(signal)/var(noise) over the true particles' boxes. Large datasets are written in chunks.
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
    refuse_input_overlap(outputs, [input_path, like_path, noise_like, junk_model], "--output-dir")
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
    _check_realism(
        defocus,
        defocus_range,
        astigmatism_range,
        bfactor,
        noise_like,
        noise_mask_radius,
        noise_falloff,
        contrast_std,
        junk_fraction,
        junk_model,
        snr,
    )
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
        defocus_range_angstrom=tuple(defocus_range) if defocus_range else None,
        astigmatism_range_angstrom=tuple(astigmatism_range) if astigmatism_range else None,
        bfactor_angstrom2=bfactor,
        noise_like=noise_like,
        noise_mask_radius_angstrom=noise_mask_radius,
        noise_falloff_angstrom=noise_falloff,
        contrast_log_std=contrast_std,
        junk_fraction=junk_fraction,
        junk_model=junk_model,
        float16=float16,
    )
    if demo:
        s.box_size, s.pixel_size_angstrom = DEMO_SETTINGS["box_size"], DEMO_SETTINGS["pixel_size_angstrom"]
    box = s.box_size
    if like is not None:
        box = int(like.box_size or box)
    elif input_path and Path(input_path).suffix.lower() in (".mrc", ".map"):
        from cryoforge.io.mrc import stack_info

        box = stack_info(input_path).size
    check_resources(Path(out_dir), len(like) if like is not None else s.n_particles, box, 2 if float16 else 4)
    extra = []
    if s.junk_fraction:
        extra.append(f"junk {s.junk_fraction:g}")
    if s.noise_like or s.noise_falloff_angstrom:
        extra.append("coloured noise")
    r = do_simulate(None if demo else input_path, out_dir, s, progress=True, like=like)
    click.echo(
        f"wrote {r.star} and {r.stack} ({s.n_particles} particles, L={s.box_size}, "
        f"{s.pixel_size_angstrom:.3g} Å/px, CTF {'on' if s.apply_ctf else 'off'}, "
        f"realised SNR {r.realised_snr if r.realised_snr else 'inf'}{''.join(', ' + e for e in extra)})"
    )


def _warn_ignored(demo: bool, like_path: str | None, input_path: str | None) -> None:
    """Say which options given on the command line the input makes meaningless."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    given = {
        n
        for n in ("n_particles", "box_size", "pixel_size", "defocus_range", "astigmatism_range")
        if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE
    }
    ignored: list[tuple[str, str]] = []
    if demo:
        ignored += [(n, "--demo (L=32, 3 Å/px)") for n in ("box_size", "pixel_size")]
    elif like_path:
        ignored += [(n, f"--like (its table's {n.split('_')[0]})") for n in ("box_size", "pixel_size")]
        ignored += [("n_particles", "--like (one particle per row of its table)")]
        ignored += [(n, "--like (its table's CTF)") for n in ("defocus_range", "astigmatism_range")]
    elif input_path and Path(input_path).suffix.lower() in (".mrc", ".map"):
        ignored += [(n, "a map input (the map's box and voxel size)") for n in ("box_size", "pixel_size")]
    for name, why in ignored:
        if name in given:
            flag = "-n" if name == "n_particles" else "--" + name.replace("_", "-")
            click.echo(f"Warning: {flag} is ignored with {why}", err=True)


def check_resources(out_dir: Path, n: int, box: int, bytes_per_pixel: int = 4) -> None:
    """Refuse a simulation whose stack would not fit on the disk of ``out_dir``, or whose chunk
    would not fit in memory (up to :func:`cryoforge.simulation.simulate.chunk_size` images are
    formed at a time, so memory does not grow with ``n`` beyond that).

    Raises
    ------
    InputFileError
        Naming ``--n-particles``, with the size needed and the size there is.
    """
    import shutil

    stack = n * box * box * bytes_per_pixel + 1024
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
    from cryoforge.simulation.simulate import chunk_size

    m = min(n, chunk_size(box))
    # measured peak: about 11× the chunk's float32 bytes (double-precision spectra, the noise)
    need_memory = 12 * m * box * box * 4 + (1 << 20)
    available = _memory_available()
    if available is not None and need_memory > available:
        raise InputFileError(
            out_dir,
            f"{n} particles of {box} px need about {_size(need_memory)} of memory ({m} images are formed "
            f"in memory at a time), {_size(available)} available; use fewer particles (-n)",
            "--n-particles",
        )


def _check_realism(
    defocus,
    defocus_range,
    astigmatism_range,
    bfactor,
    noise_like,
    noise_mask_radius,
    noise_falloff,
    contrast_std,
    junk_fraction,
    junk_model,
    snr,
) -> None:
    """One line (exit 2) for a value of the realism options that cannot be right; a warning for
    one that is ignored or implausible (the limits of :mod:`cryoforge.io.physical`)."""
    import math

    from cryoforge.io.physical import DEFOCUS_ABSURD_ANGSTROM, DEFOCUS_IMPLAUSIBLE_ANGSTROM

    def bad(name: str, why: str) -> click.BadParameter:
        return click.BadParameter(why, param_hint=f"'{name}'")

    for name, value in (
        ("--bfactor", bfactor),
        ("--noise-mask-radius", noise_mask_radius),
        ("--noise-falloff", noise_falloff),
        ("--contrast-std", contrast_std),
        ("--junk-fraction", junk_fraction),
        *(("--defocus-range", v) for v in defocus_range or ()),
        *(("--astigmatism-range", v) for v in astigmatism_range or ()),
    ):
        if value is not None and not math.isfinite(value):
            raise bad(name, f"{value} is not a finite number")
    lowest = (defocus or 20000.0) * math.exp(-5 * 0.2)  # the log-normal's 5σ low end
    if defocus_range:
        lo, hi = defocus_range
        if defocus is not None:
            raise click.UsageError("give --defocus (log-normal median) or --defocus-range, not both")
        if not 0 < lo <= hi:
            raise bad("--defocus-range", f"need 0 < MIN ≤ MAX (Å), got {lo:g} {hi:g}")
        if hi > DEFOCUS_ABSURD_ANGSTROM:
            raise bad("--defocus-range", f"{hi:g} Å is beyond 1 mm: not a defocus (in Å, not nm or µm?)")
        if hi > DEFOCUS_IMPLAUSIBLE_ANGSTROM:
            click.echo(f"Warning: --defocus-range {hi:g} Å is beyond 10 µm: implausible", err=True)
        lowest = lo
    if astigmatism_range:
        lo, hi = astigmatism_range
        if not 0 <= lo <= hi:
            raise bad("--astigmatism-range", f"need 0 ≤ MIN ≤ MAX (Å), got {lo:g} {hi:g}")
        if hi / 2 >= lowest:
            raise bad(
                "--astigmatism-range",
                f"MAX {hi:g} Å would make DefocusV ≤ 0 (the lowest mean defocus is about {lowest:.0f} Å)",
            )
    if bfactor < 0:
        raise bad("--bfactor", f"{bfactor:g} Å² would amplify high frequencies; need ≥ 0")
    if noise_like and noise_falloff is not None:
        raise click.UsageError("give --noise-like or --noise-falloff, not both")
    if noise_mask_radius is not None:
        if not noise_like:
            raise click.UsageError("--noise-mask-radius needs --noise-like")
        if noise_mask_radius <= 0:
            raise bad("--noise-mask-radius", f"{noise_mask_radius:g} Å; need > 0")
    if noise_falloff is not None and noise_falloff <= 0:
        raise bad("--noise-falloff", f"{noise_falloff:g} Å; need > 0")
    if noise_like and not Path(noise_like).is_file():
        raise InputFileError(noise_like, "particle file not found", "--noise-like")
    if contrast_std < 0:
        raise bad("--contrast-std", f"{contrast_std:g}; need ≥ 0 (the σ of the log of the scale)")
    if not 0 <= junk_fraction < 1:
        raise bad("--junk-fraction", f"{junk_fraction:g}; need 0 ≤ fraction < 1")
    if junk_model and not Path(junk_model).is_file():
        raise InputFileError(junk_model, "junk model not found", "--junk-model")
    if junk_model and not junk_fraction:
        click.echo("Warning: --junk-model is ignored without --junk-fraction", err=True)
    if snr <= 0 and (noise_like or noise_falloff is not None):
        click.echo("Warning: the noise options are ignored with --snr <= 0 (no noise)", err=True)


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
