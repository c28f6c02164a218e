"""Is an output folder writable? Checked before any work, so a long job never fails at the end."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cryoforge.errors import InputFileError


def check_writable(folder: str | Path, option: str) -> None:
    """Raise unless files can be created in ``folder`` (or the folders that would hold it).

    The test is a real write (a temporary file, removed at once) in ``folder`` or, when it does
    not exist yet, in its nearest existing parent: permission bits alone miss read-only mounts
    and say nothing when running as root.

    Parameters
    ----------
    folder
        Where the command will write.
    option
        The command-line option that named it (``--out``, ``--output-dir``), for the message.

    Raises
    ------
    InputFileError
        ``folder [option]: cannot write here (...)``.
    """
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "is a file" if probe == folder else f"{probe} is a file, not a folder"
        raise InputFileError(folder, f"cannot write here ({what})", option)
    try:
        fd, name = tempfile.mkstemp(prefix=".cryoforge-write-test-", dir=probe)
    except OSError as exc:
        raise InputFileError(
            folder, f"cannot write here ({exc.strerror or exc.__class__.__name__} in {probe})", option
        ) from None
    os.close(fd)
    os.unlink(name)


def check_writable_file(path: str | Path, option: str) -> None:
    """:func:`check_writable` for the folder of an output file; also refuses a folder as the file."""
    path = Path(path)
    if path.is_dir():
        raise InputFileError(path, "is a folder (give a file name)", option)
    check_writable(path.parent if str(path.parent) else Path("."), option)
