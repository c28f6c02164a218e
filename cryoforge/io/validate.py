"""Checks on values read from particle files, raising one-line errors naming file, field and particle."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryoforge.errors import InputFileError


def check_finite(path: str | Path, field: str, values: np.ndarray, positive: bool = False) -> np.ndarray:
    """Return ``values`` (``(N, ...)``) if every one is finite (and ``> 0`` with ``positive``).

    Raises
    ------
    InputFileError
        Naming ``path``, ``field`` and the first bad particle (1-based row of the table).
    """
    v = np.asarray(values)
    if v.dtype.kind not in "biuf":
        raise InputFileError(path, f"values of dtype {v.dtype} are not numbers", field)
    flat = v.reshape(len(v), -1) if v.ndim else v.reshape(1, 1)
    bad = ~np.isfinite(flat).all(1)
    if positive:
        bad |= ~(flat > 0).all(1)
    if bad.any():
        i = int(np.argmax(bad))
        row = flat[i]
        shown = row[0] if len(row) == 1 else np.array2string(row, precision=4, max_line_width=10**6)
        need = "a finite number > 0" if positive else "a finite number"
        raise InputFileError(path, f"particle {i + 1}: value {shown} is not {need}", field)
    return values


def decode_utf8(path: str | Path, raw: bytes, field: str | None = None) -> str:
    """Decode ``raw`` (the bytes of ``path``) as UTF-8, or say where the first bad byte is.

    Raises
    ------
    InputFileError
        ``path [line L]: not UTF-8 text (byte 0xFF at column C)``; ``field`` replaces the line
        number as the field when given.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise InputFileError(
            path,
            f"not UTF-8 text (byte 0x{raw[exc.start]:02X} at line {line}, column {col}); save it as UTF-8",
            field or f"line {line}",
        ) from None


def read_text_file(path: str | Path, what: str) -> str:
    """The UTF-8 text of ``path`` (a file, readable), with one-line errors for everything else."""
    path = Path(path)
    check_readable_file(path, what)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputFileError(path, f"cannot read {what} ({exc.strerror})") from None
    return decode_utf8(path, raw)


def check_readable_file(path: str | Path, what: str) -> None:
    """Raise :class:`InputFileError` unless ``path`` is an existing, readable regular file."""
    path = Path(path)
    if path.is_dir():
        raise InputFileError(path, f"is a folder, not a {what}")
    if not path.exists():
        raise InputFileError(path, f"{what} not found")
    if not path.is_file():
        raise InputFileError(path, f"is not a regular file (a {what} is needed)")
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise InputFileError(path, f"cannot read {what} ({exc.strerror})") from None
