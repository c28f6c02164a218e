"""``cryoforge config show``: the resolved run configuration."""

from __future__ import annotations

import click

from cryoforge.commands.common import build_config, component_options, role_names
from cryoforge.commands.group import CryoforgeGroup
from cryoforge.config import resolve


@click.group(cls=CryoforgeGroup)
def config() -> None:
    """Show the resolved configuration."""


@config.command("show")
@component_options
def config_show(config_file, overrides, particles, output_dir, demo, plugins_dirs, **names) -> None:
    """Print the resolved run configuration (every default filled in) as JSON."""
    from cryoforge.plugins import load_registry

    cfg = build_config(config_file, role_names(names), overrides, particles, output_dir, demo)
    click.echo(resolve(cfg, load_registry(list(plugins_dirs))).model_dump_json(indent=2, exclude={"plugins"}))
