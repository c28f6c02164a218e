"""The plugin contract: one hook per role, plus one for CLI commands.

Every hook returns a list of component classes. A component class has a ``name``, a nested
``Options`` model (subclass of :class:`cryoforge.Options`) and a docstring, and subclasses its
role's base class (:class:`cryoforge.Source`, :class:`cryoforge.Encoder`, ...).
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("cryoforge")
hookimpl = pluggy.HookimplMarker("cryoforge")


@hookspec
def cryoforge_register_sources() -> list[type]:
    """Return particle-stack readers (subclasses of ``cryoforge.Source``)."""


@hookspec
def cryoforge_register_encoders() -> list[type]:
    """Return image-to-pose encoders (subclasses of ``cryoforge.Encoder``)."""


@hookspec
def cryoforge_register_volumes() -> list[type]:
    """Return Fourier-space volume representations (subclasses of ``cryoforge.Volume``)."""


@hookspec
def cryoforge_register_imaging() -> list[type]:
    """Return image-formation models (subclasses of ``cryoforge.Imaging``)."""


@hookspec
def cryoforge_register_losses() -> list[type]:
    """Return losses comparing predicted and observed images (subclasses of ``cryoforge.Loss``)."""


@hookspec
def cryoforge_register_schedules() -> list[type]:
    """Return training schedules: stages over steps (subclasses of ``cryoforge.Schedule``)."""


@hookspec
def cryoforge_register_commands(cli: Any) -> None:
    """Add subcommands to the ``cryoforge`` click group ``cli``."""
