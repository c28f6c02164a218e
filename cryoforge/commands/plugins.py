"""``cryoforge plugins list|show``: the installed components and their options."""

from __future__ import annotations

import json
import sys

import click

from cryoforge.commands.common import plugins_dir_option
from cryoforge.commands.group import CryoforgeGroup
from cryoforge.config import ROLES


@click.group(cls=CryoforgeGroup)
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
