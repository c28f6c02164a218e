"""The name cryoforge is installed under on the package index, and its installed version.

The import package and the command are ``cryoforge``; the *distribution* is ``cryoforge-em``
because ``cryoforge`` on PyPI is an unrelated project (a metadata generator for ITS_LIVE velocity
scenes). Every metadata look-up (``importlib.metadata.version`` and friends) goes through
:data:`DIST_NAME`, never the import name.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DIST_NAME = "cryoforge-em"
"""The distribution name pip and ``importlib.metadata`` see (not yet on PyPI); plugins depend on it."""

UNKNOWN_VERSION = "0.0.0"
"""Reported when the package runs from a source tree that was never installed."""


def installed_version() -> str:
    """The installed version of :data:`DIST_NAME`, or :data:`UNKNOWN_VERSION` when not installed."""
    try:
        return version(DIST_NAME)
    except PackageNotFoundError:
        return UNKNOWN_VERSION
