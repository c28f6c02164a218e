"""The ``cryoforge`` command line: the click group that puts the commands of
:mod:`cryoforge.commands` together. Plugins may add commands through a hook."""

from __future__ import annotations

import click

from cryoforge.commands.config import config
from cryoforge.commands.ctf_check import ctf_check
from cryoforge.commands.evaluate import evaluate
from cryoforge.commands.group import LazyPluginGroup
from cryoforge.commands.infer import infer
from cryoforge.commands.plugins import plugins
from cryoforge.commands.reconstruct import reconstruct
from cryoforge.commands.run import run
from cryoforge.commands.select_classes import select_classes
from cryoforge.commands.simulate import simulate
from cryoforge.commands.symmetry import symmetry
from cryoforge.version import __version__


@click.group(cls=LazyPluginGroup)
@click.version_option(__version__, prog_name="cryoforge")
def cli() -> None:
    """cryoforge: amortized ab initio cryo-EM reconstruction (cryoAI and beyond)."""


for _command in (
    plugins,
    config,
    run,
    infer,
    simulate,
    evaluate,
    reconstruct,
    select_classes,
    symmetry,
    ctf_check,
):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="cryoforge")


if __name__ == "__main__":  # pragma: no cover
    main()
