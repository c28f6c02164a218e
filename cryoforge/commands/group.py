"""The click group classes of the command line: errors as one line, plugin commands added lazily."""

from __future__ import annotations

import errno
import sys
from typing import Any

import click

from cryoforge.errors import CryoforgeError
from cryoforge.io.atomic import DISK_ERRNOS


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
        except click.exceptions.Abort as exc:
            if isinstance(exc.__context__, KeyboardInterrupt):  # Ctrl-C outside a run's stages
                click.echo("Interrupted (Ctrl-C)", err=True)
                sys.exit(130)
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CryoforgeError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)
        except OSError as exc:  # the disk, not the program: a full disk, a file-size limit
            if exc.errno not in DISK_ERRNOS:
                raise
            click.echo(f"Error: {disk_error_line(exc)}", err=True)
            sys.exit(2)
        except RecursionError:
            click.echo("Error: an input is nested too deeply to read", err=True)
            sys.exit(2)


def disk_error_line(exc: OSError) -> str:
    """One line for an :data:`~cryoforge.io.atomic.DISK_ERRNOS` error: the file, the reason, what to do."""
    where = f"{exc.filename}: " if exc.filename else ""
    name = errno.errorcode.get(exc.errno or 0, "")
    what = {
        errno.ENOSPC: "free some space",
        errno.EDQUOT: "free some space (disk quota)",
        errno.EFBIG: "raise the file-size limit (ulimit -f) or write elsewhere",
        errno.EROFS: "write to another folder",
        errno.EIO: "check the disk",
    }.get(exc.errno or 0, "check the disk")
    return (
        f"{where}cannot write ({exc.strerror or exc}{f', {name}' if name else ''}); {what}, then run the "
        "command again (files written before are intact; a run continues with --resume)"
    )


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
