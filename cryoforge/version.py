"""The version of the installed cryoforge, below ``io`` so the run marker can record it.

``cryoforge.__version__`` and :func:`cryoforge.io.outputs.write_run_marker` both read it from here.
"""

from __future__ import annotations

from cryoforge.distribution import installed_version

__version__ = installed_version()  # of the distribution cryoforge-em (cryoforge.distribution.DIST_NAME)
