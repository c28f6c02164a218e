"""``cryoforge run``: train (reconstruct a map and every particle's pose) as configured."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cryoforge.commands.common import build_config, component_options, role_names, subset_options
from cryoforge.config import RunConfig, apply_override, resolve
from cryoforge.errors import ConfigError, InputFileError


@click.command()
@component_options
@click.option(
    "--dry-run",
    is_flag=True,
    help="check everything a run checks, print the resolved config (with the schedule's stages) and "
    "exit; writes nothing",
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
    cfg = build_config(config_file, role_names(names), overrides, particles, output_dir, demo, base)
    cfg = _apply_subset(cfg, ind, first)
    from cryoforge.io.writable import check_writable

    if dry_run:
        path = cfg.source.options.get("path")
        if path and Path(path).exists():  # the verdict of a real run: folder, data, device, model
            from cryoforge.engine.data_checks import report_data_quality
            from cryoforge.engine.run import check_run

            check_writable(cfg.output_dir, "--output-dir")
            cfg, registry, source = check_run(cfg, list(plugins_dirs), bool(resume_dir), overwrite)
            report_data_quality(source)  # the run's warnings, on stderr (the JSON is on stdout)
        else:  # no data yet (or none given): every option, of the components, training and stages
            registry = load_registry(list(plugins_dirs))
        click.echo(_dry_run_json(cfg, registry))
        return
    check_writable(cfg.output_dir, "--output-dir")  # before any work
    if demo and not resume_dir:  # the options, before the demo's folder is claimed and simulated
        _dry_run_json(cfg, load_registry(list(plugins_dirs)))
        from cryoforge.simulation.demo import claim_demo_run

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
