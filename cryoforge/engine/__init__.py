"""The training engine: a run's set-up, its schedule's stages, the gradient loop and callbacks.

Importing the package registers the built-in stage runners (:data:`RUNNERS`).
"""

from cryoforge.engine import loop  # noqa: F401  (registers the "gradient" runner)
from cryoforge.engine.stages import RUNNERS, register_runner

__all__ = ["RUNNERS", "register_runner"]
