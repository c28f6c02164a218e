"""Errors that reach the user as one clean line (the CLI exits with code 2, no traceback)."""

from __future__ import annotations

from pathlib import Path


class CryoforgeError(Exception):
    """Base class for every error cryoforge reports to the user as a single line."""


class ConfigError(CryoforgeError):
    """A configuration value is missing, unknown or of the wrong type."""


class PluginError(CryoforgeError):
    """A plugin could not be loaded, is misspelled, or registers a duplicate name."""


class InputFileError(CryoforgeError):
    """An input file is missing or malformed.

    Parameters
    ----------
    path
        The offending file.
    field
        The field, column or header entry that is wrong (``None`` when the whole file is).
    problem
        What is wrong, in a few words.
    """

    def __init__(self, path: str | Path, problem: str, field: str | None = None) -> None:
        self.path = Path(path)
        self.field = field
        self.problem = problem
        where = f"{path}" + (f" [{field}]" if field else "")
        super().__init__(f"{where}: {problem}")


class TrainingDiverged(CryoforgeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""
