"""The training engine: a run's set-up, its schedule's stages, the gradient loop and callbacks.

Importing the package registers the built-in stage runners (:data:`RUNNERS`).
"""

from cryoforge.engine import amortize, loop, search  # noqa: F401  (register the built-in runners)
from cryoforge.engine.stages import RUNNERS, STAGE_OPTIONS, register_runner, register_stage_options

# the options models of the built-in runners that do not name theirs in @register_runner
for _kind, _model in (("search", search.SearchOptions), ("amortize", amortize.AmortizeOptions)):
    STAGE_OPTIONS.setdefault(_kind, _model)

__all__ = ["RUNNERS", "STAGE_OPTIONS", "register_runner", "register_stage_options"]
