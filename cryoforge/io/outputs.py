"""Guards that keep what the user has: existing outputs, a command's own inputs, other runs.

- :func:`refuse_existing` and :func:`refuse_input_overlap`: an output that exists is replaced
  only with ``--overwrite``; an output that is one of the command's inputs never is.
- A run folder is recognised by its marker file :data:`MARKER` (JSON: the cryoforge version and
  when the run was created, later the data it trains on). :func:`run_dir_kind` tells a run from
  an empty folder and from a folder of something else, which no run may use.
- :class:`RunLock`: one process per run folder (``fcntl.flock`` on :data:`LOCK`; the operating
  system drops the lock when the process dies, so a ``kill -9`` never blocks the next start).
- :func:`clear_run_outputs` (``--overwrite``, or a stub that never checkpointed) and
  :func:`remove_stale_temp_files` (temporary files of a killed atomic write).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from cryoforge.errors import InputFileError
from cryoforge.io.atomic import TEMP_TAG, atomic_path
from cryoforge.version import __version__

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

MARKER = ".cryoforge-run"
"""The file that makes a folder a cryoforge run (written first, before any other output)."""

LOCK = ".cryoforge-lock"
"""Held (``flock``) by the process running in a run folder."""

RUN_FILES = (
    "config.json",
    "plugins.json",
    "checkpoint.pt",
    "map.mrc",
    "poses.star",
    "poses.cs",
    "metrics.json",
    "history.jsonl",
    "fsc.png",
    "fsc.json",
    "fsc_halves.png",
    "halfmap1.mrc",
    "halfmap2.mrc",
    "halfmap_mask.mrc",
    "map_fitted.mrc",
    "run.log",
    "inferred_poses.star",
    "inferred_poses.cs",
    "particles.txt",
    "slices.png",
    "progress.png",
    "report.html",
)
"""What a run (and ``infer`` into it) writes into a run folder and each ``half1``/``half2``."""

START_DIR = "start"
"""A half-set run's shared start (``engine/shared_start.py``): removed with the run's outputs."""
RUN_DIRS = ("tensorboard", START_DIR)
HALF_DIRS = ("half1", "half2")

RunDirKind = Literal["absent", "empty", "run", "legacy", "file", "other"]


# ----------------------------------------------------------------------------- single outputs


def refuse_existing(path: str | Path, option: str, overwrite: bool) -> None:
    """Raise unless ``path`` is absent or ``overwrite`` allows replacing it.

    Raises
    ------
    InputFileError
        Naming the file and the option that chose it.
    """
    path = Path(path)
    if overwrite:
        return
    if path.is_dir():
        raise InputFileError(path, "is a folder; give a file name", option)
    if path.exists():
        raise InputFileError(path, "is already there (give --overwrite to replace it)", option)


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def refuse_input_overlap(
    outputs: Iterable[str | Path], inputs: Iterable[str | Path | None], option: str
) -> None:
    """Raise if an output is one of the inputs (same resolved path or same file), even with ``--overwrite``.

    Raises
    ------
    InputFileError
        Naming the output, the option and which input it would destroy.
    """
    ins = [Path(p) for p in inputs if p]
    for out in outputs:
        out = Path(out)
        for inp in ins:
            if _same_file(out, inp):
                raise InputFileError(
                    out,
                    f"is an input of this command ({inp}); it is never overwritten, choose another",
                    option,
                )


def source_input_paths(source: Any) -> list[Path]:
    """The files a particle source reads: its table, its stacks, and file-valued options."""
    paths: list[Path] = []
    if getattr(source, "path", None):
        paths.append(Path(source.path))
    paths += [Path(p) for p in getattr(source, "_stack_paths", None) or []]
    options = getattr(source, "options", None)
    values = options.model_dump().values() if hasattr(options, "model_dump") else []
    for v in values:
        if isinstance(v, str) and v and Path(v).is_file():
            paths.append(Path(v))
    return paths


def config_input_files(config: Any) -> list[Path]:
    """Existing files a run config names: ``ground_truth_map`` and file-valued component options."""
    values: list[Any] = [getattr(config, "ground_truth_map", None)]
    for role in ("source", "encoder", "volume", "imaging", "loss", "schedule"):
        comp = getattr(config, role, None)
        values += list((getattr(comp, "options", None) or {}).values())
    search = (getattr(getattr(config, "schedule", None), "options", None) or {}).get("search")
    if isinstance(search, dict):  # a search's starting map (schedule.search.initial_map)
        values.append(search.get("initial_map"))
    return [Path(v) for v in values if isinstance(v, str) and v and Path(v).is_file()]


# ----------------------------------------------------------------------------- run folders


def read_run_marker(run_dir: Path) -> dict[str, Any] | None:
    """The marker's content, ``{}`` when unreadable, ``None`` when ``run_dir`` has no marker."""
    path = Path(run_dir) / MARKER
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_run_marker(run_dir: Path, fresh: bool = False, **fields: Any) -> dict[str, Any]:
    """Write the marker: format, cryoforge version, creation time, plus ``fields``.

    An existing marker is updated (its creation time kept) unless ``fresh``.
    """
    marker = {} if fresh else (read_run_marker(run_dir) or {})
    marker.setdefault("cryoforge_run", 1)
    marker.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    marker["version"] = __version__
    marker.update(fields)
    with atomic_path(Path(run_dir) / MARKER, suffix=".json") as tmp:
        tmp.write_text(json.dumps(marker, indent=2))
    return marker


def run_dir_kind(run_dir: str | Path) -> RunDirKind:
    """What ``run_dir`` is.

    Returns
    -------
    ``"absent"``; ``"file"`` (not a folder); ``"empty"`` (nothing but a lock file); ``"run"``
    (has the marker); ``"legacy"`` (a run of a cryoforge without markers: ``config.json``);
    ``"other"`` (anything else: a dataset, a project folder, which no run may use).
    """
    d = Path(run_dir)
    if not d.exists():
        return "absent"
    if not d.is_dir():
        return "file"
    names = {p.name for p in d.iterdir()} - {LOCK}
    if MARKER in names:
        return "run"
    if "config.json" in names:
        return "legacy"
    return "other" if names else "empty"


def run_has_progress(run_dir: Path) -> bool:
    """A checkpoint or a map in the run (or a half): something a fresh start would destroy."""
    folders = [run_dir, *(run_dir / h for h in HALF_DIRS), run_dir / START_DIR]
    return any((f / n).is_file() for f in folders for n in ("checkpoint.pt", "map.mrc", "start_map.mrc"))


def holds_only(folder: Path, inputs: Iterable[str | Path | None]) -> bool:
    """Every file under ``folder`` (but a lock file) is one of ``inputs``."""
    ins = [Path(p) for p in inputs if p and Path(p).is_file()]
    files = [p for p in folder.rglob("*") if not p.is_dir() and p.name != LOCK]
    return bool(ins) and all(any(_same_file(f, i) for i in ins) for f in files)


def check_run_dir(
    run_dir: Path,
    resume: bool,
    overwrite: bool,
    inputs: Iterable[str | Path | None] = (),
    locked_ok: bool = False,
) -> RunDirKind:
    """Refuse a folder a run may not use; read-only (nothing is written or created).

    A new run goes into an absent or empty folder, a folder that holds nothing but this run's
    own ``inputs`` (a reference map put there; inputs are never written over), or a marked run
    that never checkpointed (a stub left by a failed start); ``overwrite`` also replaces a run
    with progress; ``resume`` needs a run. Any other folder is refused even with ``overwrite``.

    A folder another process holds (:class:`RunLock`) is refused; ``locked_ok`` when the caller
    holds the lock itself.

    Raises
    ------
    InputFileError
        Naming the folder and ``--output-dir`` (or ``--resume``).
    """
    kind = run_dir_kind(run_dir)
    option = "--resume" if resume else "--output-dir"
    holder = None if locked_ok or kind == "file" else locked_by(Path(run_dir))
    if holder is not None:
        raise InputFileError(run_dir, _locked_message(holder), "--output-dir")
    if kind == "file":
        raise InputFileError(run_dir, "is a file, not a folder", option)
    if kind == "other" and not resume and holds_only(Path(run_dir), inputs):
        return "empty"
    if kind == "other":
        raise InputFileError(
            run_dir,
            f"not empty and not a cryoforge run (no {MARKER}); nothing in it is replaced, even with "
            "--overwrite: choose a new or empty folder",
            option,
        )
    if resume:
        if kind not in ("run", "legacy"):
            raise InputFileError(run_dir, "not a cryoforge run folder: nothing to resume", "--resume")
        return kind
    if kind == "legacy" or (kind == "run" and run_has_progress(run_dir)):
        if not overwrite:
            raise InputFileError(
                run_dir,
                f"already holds a run (continue it with --resume {run_dir}, replace it with --overwrite, "
                "or choose another --output-dir)",
                "--output-dir",
            )
    return kind


def run_output_paths(run_dir: Path) -> list[Path]:
    """Every path a run writes (or removes on ``--overwrite``) in ``run_dir``."""
    folders = [run_dir, *(run_dir / h for h in HALF_DIRS)]
    return [f / n for f in folders for n in (*RUN_FILES, *RUN_DIRS)]


def clear_run_outputs(run_dir: Path) -> list[Path]:
    """Remove a run's own outputs (logs, TensorBoard, checkpoints, maps), nothing else.

    Files the run did not write (``data/`` of the demo, the user's notes) stay. Returns the
    removed paths.
    """
    removed = []
    for p in run_output_paths(run_dir):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(p)
    for h in HALF_DIRS:
        with contextlib.suppress(OSError):
            (run_dir / h).rmdir()  # only when empty
    return removed


_TEMP = re.compile(rf"^\..+\.{re.escape(TEMP_TAG)}[A-Za-z0-9_]+(\.[^.]*)?$")
_LEGACY_TEMP = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}(\.[^.]*)?$")


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Remove temporary files of atomic writes killed midway in ``folder`` (and its halves).

    Call only while holding the folder's :class:`RunLock` (a live writer's temp file would go).
    Recognises :func:`cryoforge.io.atomic.atomic_path`'s names, and the names of earlier versions
    for the files a run writes.
    """
    removed = []
    for f in [folder, *(folder / h for h in HALF_DIRS), folder / START_DIR]:
        if not f.is_dir():
            continue
        for p in f.iterdir():
            legacy = _LEGACY_TEMP.match(p.name)
            if p.is_file() and (_TEMP.match(p.name) or (legacy and legacy["name"] in RUN_FILES)):
                p.unlink()
                removed.append(p)
    return removed


def _locked_message(holder: str) -> str:
    return (
        f"another cryoforge process (pid {holder}) is running in this folder; "
        "wait for it to end or choose another folder"
    )


def locked_by(run_dir: Path) -> str | None:
    """The pid (as written) of the process holding ``run_dir``'s :class:`RunLock`, else ``None``.

    Reads only: the lock file is probed, never created.
    """
    if fcntl is None:  # pragma: no cover
        return None
    try:
        fd = os.open(run_dir / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return os.read(fd, 32).decode(errors="replace").strip() or "?"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class RunLock:
    """An exclusive, non-blocking lock on a run folder, held for a ``with`` block.

    ``flock`` belongs to the open file, so the operating system releases it when the process
    ends in any way; a lock file left by ``kill -9`` does not block the next start. The file
    holds the pid of the process that holds the lock, for the error message.

    Raises
    ------
    InputFileError
        On entry, when another process holds the lock.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        if fcntl is None:  # pragma: no cover
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise InputFileError(self.run_dir, _locked_message(holder), "--output-dir") from None
            try:  # the file we locked may have been removed by the holder that just ended
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None
