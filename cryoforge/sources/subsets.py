"""Particle subsets as cryoDRGN users give them: ``--ind`` (a ``.pkl``/``.txt`` of indices), ``--first N``."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

from cryoforge.errors import InputFileError
from cryoforge.sources.pickles import _ArrayOnlyUnpickler


def load_indices(path: str | Path) -> np.ndarray:
    """0-based particle indices from a cryoDRGN ``.pkl`` (a pickled integer array or list) or a text
    file (integers separated by whitespace or commas; ``#`` starts a comment).

    The pickle is read with the restricted unpickler (numpy arrays and plain lists only).

    Returns
    -------
    np.ndarray
        ``(M,)`` int64, as given (not yet checked against a dataset).
    """
    from cryoforge.io.validate import check_readable_file, read_text_file

    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "index file not found", "--ind")
    try:
        check_readable_file(path, "particle index file")  # a folder, /dev/zero: said, not "not found"
    except InputFileError as exc:
        raise InputFileError(path, exc.problem, "--ind") from None
    if path.suffix.lower() in (".pkl", ".pickle"):
        import pickle

        try:
            obj = _ArrayOnlyUnpickler(io.BytesIO(path.read_bytes())).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as exc:
            raise InputFileError(path, f"not an index pickle ({exc})", "--ind") from None
        if isinstance(obj, list | tuple) and all(isinstance(x, int | np.integer) for x in obj):
            big = next((x for x in obj if not -(2**63) <= int(x) < 2**63), None)
            if big is not None:
                raise InputFileError(path, f"index {big} is out of range (too large)", "--ind")
            obj = np.array(obj, dtype=np.int64)
        if (
            not isinstance(obj, np.ndarray)
            or obj.ndim != 1
            or not (np.issubdtype(obj.dtype, np.integer) or (obj.size == 0 and obj.dtype == np.float64))
        ):
            what = f"array {obj.dtype} {obj.shape}" if isinstance(obj, np.ndarray) else type(obj).__name__
            raise InputFileError(path, f"expected a 1-D list of integer indices, got {what}", "--ind")
        return obj.astype(np.int64)
    try:
        text = read_text_file(path, "particle index file").lstrip("\ufeff")
    except InputFileError as exc:
        raise InputFileError(path, exc.problem, "--ind") from None
    text = re.sub(r"#[^\n]*", "", text)
    tokens = [t for t in re.split(r"[\s,]+", text) if t]
    try:
        values = [int(t) for t in tokens]
    except ValueError:
        bad = next(t for t in tokens if not t.lstrip("-").isdigit())
        raise InputFileError(path, f"not an integer index: {bad!r}", "--ind") from None
    big = next((i for i, v in enumerate(values) if not -(2**63) <= v < 2**63), None)
    if big is not None:
        raise InputFileError(
            path, f"index {tokens[big]} (entry {big + 1}) is out of range (too large)", "--ind"
        )
    return np.array(values, dtype=np.int64)


def select_particles(n: int, ind: str | Path | None = None, first: int | None = None) -> np.ndarray:
    """The rows of an ``n``-particle file to use, sorted (the file's order).

    ``ind`` selects particles by 0-based index; ``first`` then keeps the first ``first`` of them
    (of all particles without ``ind``).

    Raises
    ------
    InputFileError
        For an index out of range, a repeated index or an empty selection, naming the file.
    """
    rows = np.arange(n, dtype=np.int64)
    if ind:
        idx = load_indices(ind)
        if idx.size == 0:
            raise InputFileError(ind, "the index list is empty", "--ind")
        bad = idx[(idx < 0) | (idx >= n)]
        if bad.size:
            raise InputFileError(
                ind, f"index {int(bad[0])} out of range for {n} particles (indices are 0-based)", "--ind"
            )
        rows = np.unique(idx)
        if len(rows) != len(idx):
            vals, counts = np.unique(idx, return_counts=True)
            raise InputFileError(ind, f"index {int(vals[counts > 1][0])} is listed twice", "--ind")
    if first is not None:
        rows = rows[:first]
    return rows
