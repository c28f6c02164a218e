"""Click options and the run-configuration builder that several commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cryoforge.config import ROLES, RunConfig, apply_override, load_config_file, parse_value
from cryoforge.errors import InputFileError


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


def component_options(f):
    """The options that compose a run configuration: ``--config``, ``--<role>``, ``-o``,
    ``--particles``, ``--output-dir``, ``--demo`` and ``--plugins-dir`` (see :func:`build_config`)."""
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
        from cryoforge.simulation.demo import demo_config

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
        config = apply_override(config, key, parse_value(value, f"-o {key}"))
    return config


def role_names(kw: dict[str, Any]) -> dict[str, str | None]:
    """The ``--<role>`` names of :func:`component_options` by role (``None`` where not given)."""
    return {r: kw.get(f"{r}_name") for r in ROLES}
