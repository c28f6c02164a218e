"""The training engine: a run's set-up, its schedule's stages, the gradient loop and callbacks.

Importing the package registers the built-in stage runners (:data:`RUNNERS`).
"""

from cryoforge.engine import amortize, loop, search, semi_amortized  # noqa: F401  (the built-in runners)
from cryoforge.engine.stages import RUNNERS, STAGE_OPTIONS, register_runner, register_stage_options

__all__ = ["RUNNERS", "STAGE_OPTIONS", "register_runner", "register_stage_options"]
