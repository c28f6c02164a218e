"""The click group classes of the command line: errors as one line, plugin commands added lazily."""

from __future__ import annotations

import sys
from typing import Any

import click

from cryoforge.errors import CryoforgeError


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
