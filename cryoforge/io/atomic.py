"""Atomic file writes: write to a temporary file in the same directory, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

TEMP_TAG = "cftmp-"
"""Part of every temporary name (``.NAME.cftmp-XXXXXXXX.SUFFIX``), so that a temporary file left
by a killed write can be recognised and removed (:func:`cryoforge.io.outputs.remove_stale_temp_files`)."""

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    On error the temporary file is removed and an existing ``path`` is left untouched. The
    file gets the mode of any new file, ``0o666`` less the umask (``mkstemp`` alone gives 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{TEMP_TAG}", suffix=suffix or path.suffix
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~current_umask())
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
