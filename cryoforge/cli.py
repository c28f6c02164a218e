"""The ``cryoforge`` command line (click). Plugins may add commands through a hook."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from cryoforge.config import (
    ROLES,
    RunConfig,
    apply_override,
    load_config_file,
    parse_value,
    resolve,
)
from cryoforge.errors import ConfigError, CryoforgeError, InputFileError


class CryoforgeGroup(click.Group):
    """A click group that turns :class:`CryoforgeError` and usage errors into one line, exit code 2."""

    def main(self, args: Any = None, prog_name: str | None = None, *a: Any, **kw: Any) -> Any:
        if not kw.get("standalone_mode", True):
            return super().main(args, prog_name, *a, **kw)
        kw["standalone_mode"] = False
        try:
            rv = super().main(args, prog_name, *a, **kw)
        except click.UsageError as exc:  # one line, with where to look, instead of usage + hint
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare ``cryoforge``: the help
                click.echo(exc.format_message(), err=True)
                sys.exit(2)
            where = exc.ctx.command_path if exc.ctx is not None else (prog_name or "cryoforge")
            click.echo(f"Error: {exc.format_message()} (see '{where} --help')", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CryoforgeError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)


class LazyPluginGroup(CryoforgeGroup):
    """Adds plugin-provided commands on first listing or lookup."""

    _loaded = False

    def _load_plugin_commands(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        try:
            from cryoforge.plugins import get_plugin_manager

            get_plugin_manager().hook.cryoforge_register_commands(cli=self)
        except CryoforgeError as exc:
            click.echo(f"Warning: plugin commands not loaded: {exc}", err=True)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is None:
            self._load_plugin_commands()
            cmd = super().get_command(ctx, name)
        return cmd


def _version() -> str:
    from cryoforge import __version__

    return __version__


@click.group(cls=LazyPluginGroup)
@click.version_option(_version(), prog_name="cryoforge")
def cli() -> None:
    """cryoforge: amortized ab initio cryo-EM reconstruction (cryoAI and beyond)."""


def main() -> None:
    cli(prog_name="cryoforge")


def subset_options(f):
    """``--ind FILE`` and ``--first N``: a particle subset, as in cryoDRGN."""
    f = click.option(
        "--first", type=click.IntRange(1), default=None, help="use only the first N particles (of --ind's)"
    )(f)
    return click.option(
        "--ind",
        type=click.Path(dir_okay=False),
        default=None,
        help="use only these particles: a cryoDRGN .pkl or a .txt of 0-based indices",
    )(f)


plugins_dir_option = click.option(
    "--plugins-dir",
    "plugins_dirs",
    multiple=True,
    type=click.Path(file_okay=False),
    help="folder of local plugin .py files",
)


# ----------------------------------------------------------------------------- plugins


@cli.group(cls=CryoforgeGroup)
def plugins() -> None:
    """List and inspect the installed components."""


@plugins.command("list")
@click.option("--kind", type=click.Choice(list(ROLES)), help="only this role")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@plugins_dir_option
def plugins_list(kind: str | None, as_json: bool, plugins_dirs: tuple[str, ...]) -> None:
    """Components by role, with the plugin (and version) that provides each."""
    from cryoforge.plugins import build_registry, get_plugin_manager, plugin_versions

    pm = get_plugin_manager(list(plugins_dirs))
    reg = build_registry(pm)
    versions = plugin_versions(pm)
    rows = [
        {
            "kind": k,
            "name": n,
            "plugin": e.provider,
            "version": versions.get(e.provider, ""),
            "summary": (e.cls.__doc__ or "").strip().splitlines()[0],
        }
        for k, n, e in reg
        if kind is None or k == kind
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("kind", "name", "plugin", "version", "summary")
    for r in rows:
        table.add_row(r["kind"], r["name"], r["plugin"], r["version"], r["summary"])
    Console(width=160).print(table)


@plugins.command("show")
@click.argument("kind", type=click.Choice([*ROLES, "train"]))
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="the options' JSON schema instead of a table")
@plugins_dir_option
def plugins_show(kind: str, name: str | None, as_json: bool, plugins_dirs: tuple[str, ...]) -> None:
    """A component's docstring and a table of its options: name, type, default, description.

    \b
    Examples:
      cryoforge plugins show volume fouriernet
      cryoforge plugins show train          (the train.* settings)
    """
    from cryoforge.option_docs import option_rows

    if kind == "train":
        from cryoforge.config import TrainConfig

        model, title, doc = TrainConfig, "train.* settings (-o train.NAME VALUE)", TrainConfig.__doc__
    else:
        if not name:
            raise click.UsageError(f"give the {kind} NAME (see: cryoforge plugins list --kind {kind})")
        from cryoforge.plugins import load_registry

        cls = load_registry(list(plugins_dirs)).get(kind, name)
        model, doc = cls.Options, cls.__doc__
        title = f"{kind} {name!r} ({cls.__module__}.{cls.__qualname__}); set with -o {kind}.NAME VALUE"
    if as_json:
        click.echo(json.dumps(model.model_json_schema(), indent=2))
        return
    import inspect

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160, highlight=False)
    console.print(escape(title))
    console.print(escape(inspect.cleandoc(doc or "")) + "\n")
    table = Table("option", "type", "default", "description", title="Options", title_justify="left")
    for r in option_rows(model):
        table.add_row(*(escape(x) for x in (r.name, r.type, r.default, r.description)))
    if not table.row_count:
        console.print("Options: none")
        return
    console.print(table)


# ----------------------------------------------------------------------------- config / run


def component_options(f):
    f = click.option("--config", "config_file", type=click.Path(), help="TOML or JSON run config")(f)
    for role in reversed(ROLES):
        f = click.option(f"--{role}", f"{role}_name", help=f"{role} component name")(f)
    f = click.option(
        "-o",
        "--option",
        "overrides",
        type=(str, str),
        multiple=True,
        metavar="KEY VALUE",
        help="set e.g. volume.hidden_dim 256 or train.epochs 5",
    )(f)
    f = click.option("--particles", type=click.Path(), help=".star, .cs or .mrcs particle file")(f)
    f = click.option("--output-dir", "-d", type=click.Path(), help="run directory")(f)
    f = click.option("--demo", is_flag=True, help="run on the built-in demo dataset (adenylate kinase)")(f)
    f = plugins_dir_option(f)
    return f


def build_config(
    config_file: str | None,
    names: dict[str, str | None],
    overrides: tuple[tuple[str, str], ...],
    particles: str | None,
    output_dir: str | None,
    demo: bool,
    base: RunConfig | None = None,
) -> RunConfig:
    """Compose a RunConfig: defaults ← demo preset ← config file (or ``base``, a run's own
    config) ← CLI names and ``-o`` overrides."""
    from cryoforge.sources import SUFFIX_TO_SOURCE

    config = RunConfig()
    if demo:
        from cryoforge.demo import demo_config

        config = demo_config(Path(output_dir or "demo_run"))
    if config_file:
        cfg_path = Path(config_file)
        if cfg_path.name == "config.json" and (cfg_path.parent / "plugins.json").is_file():
            from cryoforge.engine.portable import load_run_config

            config = load_run_config(cfg_path.parent)  # a run's own config: paths from its folder
        else:
            config = load_config_file(config_file)
    if base is not None:
        config = base
    if particles:
        p = Path(particles)
        if not p.exists():
            raise InputFileError(p, "particle file not found", "--particles")
        if not names.get("source"):
            suffix = p.suffix.lower()
            if suffix not in SUFFIX_TO_SOURCE:
                raise InputFileError(
                    p, f"unknown particle file type {suffix!r} (use --source)", "--particles"
                )
            config = apply_override(config, "source.name", SUFFIX_TO_SOURCE[suffix])
        config = apply_override(config, "source.path", str(p))
    for role, name in names.items():
        if name:
            config = apply_override(config, f"{role}.name", name)
    if output_dir:
        config = apply_override(config, "output_dir", output_dir)
    for key, value in overrides:
        config = apply_override(config, key, parse_value(value))
    return config


@cli.group(cls=CryoforgeGroup)
def config() -> None:
    """Show the resolved configuration."""


@config.command("show")
@component_options
def config_show(config_file, overrides, particles, output_dir, demo, plugins_dirs, **names) -> None:
    """Print the resolved run configuration (every default filled in) as JSON."""
    from cryoforge.plugins import load_registry

    cfg = build_config(config_file, _names(names), overrides, particles, output_dir, demo)
    click.echo(resolve(cfg, load_registry(list(plugins_dirs))).model_dump_json(indent=2, exclude={"plugins"}))


def _names(kw: dict[str, Any]) -> dict[str, str | None]:
    return {r: kw.get(f"{r}_name") for r in ROLES}


@cli.command()
@component_options
@click.option(
    "--dry-run", is_flag=True, help="print the resolved config (with the schedule's stages) and exit"
)
@click.option("--resume", "resume_dir", type=click.Path(), help="continue the run in this directory")
@click.option("--overwrite", is_flag=True, help="replace a run already in the output directory")
@subset_options
def run(
    config_file,
    overrides,
    particles,
    output_dir,
    demo,
    plugins_dirs,
    dry_run,
    resume_dir,
    overwrite,
    ind,
    first,
    **names,
) -> None:
    """Reconstruct a map and every particle's pose (default: the cryoAI pipeline).

    \b
    Examples:
      cryoforge run --demo
      cryoforge run --particles particles.star -o source.downsample_to 128 -d runs/job1
      cryoforge run --resume runs/job1
      cryoforge run --particles particles.star --ind good.pkl -d runs/job2
    """
    from cryoforge.plugins import load_registry

    base = None
    if resume_dir:
        from cryoforge.engine.portable import load_run_config

        if overwrite:
            raise ConfigError("--resume and --overwrite: give one of them")
        if output_dir and Path(output_dir).resolve() != Path(resume_dir).resolve():
            raise ConfigError(f"--resume {resume_dir} continues in its own folder; drop -d {output_dir}")
        cfg_path = Path(resume_dir) / "config.json"
        if not cfg_path.is_file():
            raise InputFileError(cfg_path, "no config.json: not a cryoforge run directory", "--resume")
        base, output_dir = load_run_config(resume_dir, list(plugins_dirs)), resume_dir
    cfg = build_config(config_file, _names(names), overrides, particles, output_dir, demo, base)
    cfg = _apply_subset(cfg, ind, first)
    if dry_run:
        click.echo(_dry_run_json(cfg, load_registry(list(plugins_dirs))))
        return
    from cryoforge.io.writable import check_writable

    check_writable(cfg.output_dir, "--output-dir")  # before any work
    if demo and not resume_dir:
        from cryoforge.demo import claim_demo_run

        claim_demo_run(Path(cfg.output_dir), Path(cfg.source.options["path"]).parent, overwrite)
    from cryoforge.engine.run import run as run_training

    result = run_training(cfg, list(plugins_dirs), resume=bool(resume_dir), overwrite=overwrite)
    _print_result(result)


def _apply_subset(cfg: RunConfig, ind: str | None, first: int | None) -> RunConfig:
    """``--ind``/``--first`` as the source's ``ind``/``first`` options."""
    if ind:
        cfg = apply_override(cfg, "source.ind", str(Path(ind).absolute()))
    if first:
        cfg = apply_override(cfg, "source.first", first)
    return cfg


def _dry_run_json(config: RunConfig, registry) -> str:
    """The resolved config as JSON, with the stages of its schedule under ``schedule.stages``."""
    from cryoforge.engine.stages import schedule_stages

    config = resolve(config, registry)
    data = json.loads(config.model_dump_json(exclude={"plugins"}))
    data["schedule"]["stages"] = [s.model_dump(mode="json") for s in schedule_stages(config, registry)]
    return json.dumps(data, indent=2, ensure_ascii=False)


def _print_result(result) -> None:
    """The end-of-run summary: the files that exist, the metrics (ground-truth ones labelled as
    such; they exist only when a truth was given), warnings, and last how to open the map.

    A rich table on a terminal; plain ``label  value`` lines otherwise (logs are never cut)."""
    from cryoforge.report.metrics import labelled_rows

    run_dir = Path(result.run_dir)
    files = [
        ("map", result.map_path),
        ("poses", result.star_path),
        ("FSC plot", result.fsc_plot),
        ("report", run_dir / "report.html"),
        ("slices", run_dir / "slices.png"),
        ("progress plot", run_dir / "progress.png"),
    ]
    rows = [(label, str(p)) for label, p in files if p and Path(p).is_file()]
    rows += labelled_rows(result.metrics)
    title = f"cryoforge run: {run_dir}"
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        table = Table("output", "value", title=escape(title))
        for label, value in rows:
            table.add_row(escape(label), escape(value))
        Console().print(table)
    else:
        width = max((len(label) for label, _ in rows), default=0)
        click.echo(title)
        for label, value in rows:
            click.echo(f"  {label:<{width}}  {value}")
    for w in getattr(result, "warnings", []):
        click.echo(f"Warning: {w}", err=True)
    if result.map_path and Path(result.map_path).is_file():
        click.echo(f"open the map: chimerax {result.map_path}")


@cli.command()
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
) -> None:
    """Predict poses for a whole dataset with a trained encoder (no gradients, dataset order).

    The star keeps every column of the input; a cryoSPARC input also gets a .cs next to it.
    """
    import time

    from cryoforge.errors import ConfigError
    from cryoforge.infer import infer_run

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
    )
    cs = path.with_suffix(".cs")
    click.echo(f"wrote {path}" + (f" and {cs}" if cs.is_file() and cs.stat().st_mtime >= start - 1 else ""))


# ----------------------------------------------------------------------------- simulate / evaluate


@cli.command()
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
    seed,
    overwrite,
) -> None:
    """Simulate particles from an .mrc map or a .pdb/.cif model (ground-truth poses in the .star).

    Images follow RELION's conventions: the molecule is white, and a particle whose star says
    origin ``o`` sits at ``−o``. With ``--like``, the particles copy an existing table.
    """
    from cryoforge.demo import DEMO_SETTINGS
    from cryoforge.simulate import SimulationSettings, read_like_table
    from cryoforge.simulate import simulate as do_simulate

    if not input_path and not demo:
        raise click.UsageError("give an INPUT_PATH (.mrc/.pdb/.cif) or --demo")
    if input_path and not Path(input_path).exists():
        raise InputFileError(input_path, "input file not found", "INPUT_PATH")
    from cryoforge.io.outputs import refuse_existing, refuse_input_overlap, run_dir_kind
    from cryoforge.simulate import OUTPUT_NAMES

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
    )
    if demo:
        s.box_size, s.pixel_size_angstrom = DEMO_SETTINGS["box_size"], DEMO_SETTINGS["pixel_size_angstrom"]
    r = do_simulate(None if demo else input_path, out_dir, s, like=like)
    click.echo(
        f"wrote {r.star} and {r.stack} ({s.n_particles} particles, L={s.box_size}, "
        f"{s.pixel_size_angstrom:.3g} Å/px, CTF {'on' if s.apply_ctf else 'off'}, "
        f"realised SNR {r.realised_snr if r.realised_snr else 'inf'})"
    )


@cli.command()
@click.argument("map_path", type=click.Path())
@click.option(
    "--ref", "ref_path", type=click.Path(), help="ground-truth map (aligned: hands, rotation, shift)"
)
@click.option("--half2", "half2_path", type=click.Path(), help="second half map (FSC at 0.143, no alignment)")
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
def evaluate(map_path, ref_path, half2_path, poses_path, gt_poses_path, out_dir, overwrite) -> None:
    """FSC and resolution (0.5 / 0.143), pose errors; prints a table, writes fsc.png and metrics.json."""
    from cryoforge.evaluate_cli import evaluate_files
    from cryoforge.io.writable import check_writable

    check_writable(out_dir, "--output-dir")
    metrics = evaluate_files(
        map_path, ref_path, half2_path, poses_path, gt_poses_path, Path(out_dir), overwrite=overwrite
    )
    from rich.console import Console
    from rich.table import Table

    table = Table("metric", "value", title="cryoforge evaluate")
    from cryoforge.evaluate_cli import metric_rows

    for k, v in metric_rows(metrics):
        table.add_row(k, v)
    Console(width=120).print(table)


@cli.command()
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
    from cryoforge.reconstruct import reconstruct_file

    path = reconstruct_file(
        Path(particles), Path(out_map), poses_pkl, not no_ctf, ind, first, overwrite=overwrite
    )
    click.echo(f"wrote {path}")


if __name__ == "__main__":  # pragma: no cover
    main()
