"""Atomic file writes: write to a temporary file in the same directory, then rename."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

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
    except OSError as exc:
        if exc.errno in DISK_ERRNOS and exc.filename is None:  # name the file being written
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except RuntimeError as exc:  # torch.save's writer says "file write failed", not which errno
        errno_ = _disk_failure(tmp_path)
        if errno_ is None:
            raise
        raise OSError(errno_, os.strerror(errno_), str(path)) from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO})
"""Errors of the disk, not of the program: reported as one line (exit 2) by the command line."""


def _disk_failure(tmp: Path) -> int | None:
    """Why a write into ``tmp`` failed, when the disk is to blame: ``ENOSPC`` (the file system is
    full) or ``EFBIG`` (the file reached the process's file-size limit); else ``None``."""
    try:
        size = tmp.stat().st_size if tmp.exists() else 0
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource is not None else -1
        if limit not in (-1, getattr(resource, "RLIM_INFINITY", -1)) and size >= limit:
            return errno.EFBIG
        st = os.statvfs(tmp.parent)
        if st.f_bavail * st.f_frsize < 1 << 20:
            return errno.ENOSPC
    except OSError:
        return None
    return None
