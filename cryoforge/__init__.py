"""cryoforge: amortized ab initio cryo-EM reconstruction as a plugin framework.

The public face for users and plugin authors::

    from cryoforge import hookimpl, Options, Volume, load_registry, run
"""

from cryoforge.config import ComponentConfig, RunConfig, TrainConfig
from cryoforge.errors import CryoforgeError
from cryoforge.hookspecs import hookimpl
from cryoforge.options import Options
from cryoforge.plugins import load_registry
from cryoforge.roles import Encoder, Imaging, Loss, Schedule, Source, Volume
from cryoforge.schedules.base import Stage
from cryoforge.types import BuildContext, CTFParams, ParticleBatch, Pose
from cryoforge.version import __version__


def run(
    config: RunConfig, plugins_dirs: list[str] | None = None, resume: bool = False, overwrite: bool = False
):
    """Train as configured; the CLI and scripts (``examples/ablate.py``) both call this.

    Returns the :class:`cryoforge.engine.context.RunResult` with the output paths and final metrics.
    """
    from cryoforge.engine.run import run as _run

    return _run(config, plugins_dirs=plugins_dirs, resume=resume, overwrite=overwrite)


__all__ = [
    "BuildContext",
    "CTFParams",
    "ComponentConfig",
    "CryoforgeError",
    "Encoder",
    "Imaging",
    "Loss",
    "Options",
    "ParticleBatch",
    "Pose",
    "RunConfig",
    "Schedule",
    "Source",
    "Stage",
    "TrainConfig",
    "Volume",
    "__version__",
    "hookimpl",
    "load_registry",
    "run",
]
