"""Particles of chosen 2D classes (RELION ``Class2D`` ``_data.star``), as users select them before ab initio.

Particles are matched between the classification and the particle file by ``rlnImageName``: the
same image number in the same stack file (``000012@a/b.mrcs`` and ``12@./a/b.mrcs`` match). The
selection is written as a subset of a STAR file (every block and column kept as written, the
particles in the file's own order) or as an ``--ind`` index file (0-based rows, cryoDRGN's ``.txt``
or ``.pkl``).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cryoforge.errors import InputFileError
from cryoforge.io.atomic import atomic_path
from cryoforge.io.star_document import (
    ORIGIN_LABELS,
    STALE_ORIGIN_LABELS,
    StarBlock,
    StarDocument,
    read_star_document,
    split_tokens,
    unquote,
)
from cryoforge.io.table import parse_image_name

CLASS_FIELD = "rlnClassNumber"
IMAGE_FIELD = "rlnImageName"
ALIGNMENT_LABELS = tuple(ORIGIN_LABELS)
"""What ``origins=True`` carries from the classification: the 2D origins ``rlnOriginX/YAngst``
(Å), not its angles (Class2D's in-plane angle is not a 3D pose, and a file with angles reads as
one with known poses). cryoforge's STAR reader takes origins with or without angles."""
INDEX_SUFFIXES = (".txt", ".pkl", ".pickle")
OUTPUT_SUFFIXES = (".star", *INDEX_SUFFIXES)


@dataclass
class ClassSelection:
    """The particles of some 2D classes, as rows of the file the selection is written from.

    Attributes
    ----------
    classification
        The classification STAR file (holds ``rlnClassNumber``).
    target
        The file whose rows were selected: the particle file, or the classification itself.
    rows
        ``(M,)`` sorted 0-based rows of ``target``'s particle table.
    class_rows
        ``(M,)`` the same particles' rows in the classification, aligned with ``rows``.
    classes
        The chosen class numbers, sorted.
    counts
        Particles per chosen class.
    n_classified
        Particles in the classification.
    n_target
        Particles in ``target``.
    """

    classification: StarDocument
    target: StarDocument
    rows: np.ndarray
    class_rows: np.ndarray
    classes: tuple[int, ...]
    counts: dict[int, int]
    n_classified: int
    n_target: int


def parse_class_list(text: str) -> tuple[int, ...]:
    """``"26,28, 50"`` → ``(26, 28, 50)``: class numbers (whole numbers ≥ 1) separated by commas or spaces.

    Raises
    ------
    ValueError
        For an empty list or a value that is not a whole number ≥ 1 (the message names it).
    """
    tokens = [t for t in text.replace(",", " ").split() if t]
    if not tokens:
        raise ValueError("no class numbers given (e.g. --classes 26,28,50)")
    out = []
    for t in tokens:
        if not t.isdigit() or int(t) < 1:
            raise ValueError(f"{t!r} is not a class number (a whole number >= 1, as RELION numbers classes)")
        out.append(int(t))
    return tuple(sorted(set(out)))


def _image_keys(doc: StarDocument) -> list[tuple[int, str]]:
    """Each particle's image as ``(0-based index, normalised stack path)``, or a one-line error."""
    block = doc.particles
    path = doc.path or "<star>"
    if IMAGE_FIELD not in block.labels:
        raise InputFileError(path, "no image names: cannot match particles", IMAGE_FIELD)
    keys = []
    for i, token in enumerate(block.column(IMAGE_FIELD)):
        try:
            idx, file = parse_image_name(unquote(token))
        except ValueError as exc:
            raise InputFileError(path, f"particle {i + 1}: {exc}", IMAGE_FIELD) from None
        keys.append((idx, os.path.normpath(file)))
    return keys


def _name(key: tuple[int, str]) -> str:
    return f"{key[0] + 1:06d}@{key[1]}"


def _class_numbers(doc: StarDocument) -> np.ndarray:
    """``(N,)`` the 2D class of every particle (whole numbers), or a one-line error."""
    block = doc.particles
    path = doc.path or "<star>"
    if CLASS_FIELD not in block.labels:
        raise InputFileError(path, "no 2D class numbers (give the _data.star of a Class2D job)", CLASS_FIELD)
    out = np.empty(len(block), np.int64)
    for i, token in enumerate(block.column(CLASS_FIELD)):
        try:
            v = float(unquote(token))
        except ValueError:
            v = float("nan")
        if not np.isfinite(v) or v != round(v):
            raise InputFileError(path, f"particle {i + 1}: {token!r} is not a class number", CLASS_FIELD)
        out[i] = int(v)
    return out


def _first_duplicate(keys: Sequence[tuple[int, str]]) -> tuple[int, int] | None:
    """The rows ``(first, second)`` of the first image listed twice, or ``None``."""
    seen: dict[tuple[int, str], int] = {}
    for i, k in enumerate(keys):
        if k in seen:
            return seen[k], i
        seen[k] = i
    return None


def select_class_particles(
    classification: str | Path, classes: Sequence[int], particles: str | Path | None = None
) -> ClassSelection:
    """The particles of ``classes`` in ``classification``, as rows of ``particles`` (or of the
    classification itself when ``particles`` is ``None``).

    Parameters
    ----------
    classification
        A STAR file whose particle table has ``rlnClassNumber`` and ``rlnImageName`` (RELION's
        ``Class2D/jobNNN/run_itNNN_data.star``).
    classes
        Class numbers as RELION numbers them (from 1).
    particles
        The STAR file to select from (e.g. ``Extract/jobNNN/particles.star``); its particles are
        matched to the classification's by image.

    Raises
    ------
    InputFileError
        Naming the file and the field: no ``rlnClassNumber`` or ``rlnImageName`` column, a class
        with no particle, a selected particle missing from ``particles``, an image listed twice.
    """
    class_doc = read_star_document(classification)
    class_path = class_doc.path or Path(classification)
    numbers = _class_numbers(class_doc)
    if len(numbers) == 0:
        raise InputFileError(class_path, "no particles: the table has a header but no rows", CLASS_FIELD)
    chosen = tuple(sorted(set(int(c) for c in classes)))
    present = set(np.unique(numbers).tolist())
    absent = [c for c in chosen if c not in present]
    if absent:
        if present == {0}:
            why = "every particle is in class 0, not classified (give the _data.star of a Class2D job)"
        else:
            nonzero = sorted(present - {0})
            why = f"the file has {len(nonzero)} classes, numbered {nonzero[0]} to {nonzero[-1]}"
        listed = ", ".join(str(c) for c in absent)
        raise InputFileError(
            class_path, f"no particle in class{'es' if len(absent) > 1 else ''} {listed}; {why}", CLASS_FIELD
        )
    class_keys = _image_keys(class_doc)
    picked = np.nonzero(np.isin(numbers, chosen))[0]
    picked_keys = [class_keys[i] for i in picked]
    dup = _first_duplicate(picked_keys)
    if dup is not None:
        a, b = (int(picked[j]) + 1 for j in dup)
        raise InputFileError(
            class_path,
            f"image {_name(picked_keys[dup[0]])} is listed twice (particles {a} and {b})",
            IMAGE_FIELD,
        )
    if particles is None:
        target, rows, class_rows = class_doc, picked, picked
    else:
        target = read_star_document(particles)
        target_path = target.path or Path(particles)
        target_keys = _image_keys(target)
        dup = _first_duplicate(target_keys)
        if dup is not None:
            raise InputFileError(
                target_path,
                f"image {_name(target_keys[dup[0]])} is listed twice (particles {dup[0] + 1} and "
                f"{dup[1] + 1}): the match by image is ambiguous",
                IMAGE_FIELD,
            )
        where = {k: i for i, k in enumerate(target_keys)}
        missing = [j for j, k in enumerate(picked_keys) if k not in where]
        if missing:
            first = missing[0]
            raise InputFileError(
                target_path,
                f"{len(missing)} of the {len(picked)} selected particles are not in this file; the "
                f"first: {_name(picked_keys[first])} (particle {int(picked[first]) + 1} of "
                f"{class_path.name})",
                IMAGE_FIELD,
            )
        found = np.array([where[k] for k in picked_keys], dtype=np.int64)
        order = np.argsort(found, kind="stable")
        rows, class_rows = found[order], picked[order]
    counts = {c: int(np.count_nonzero(numbers == c)) for c in chosen}
    return ClassSelection(
        classification=class_doc,
        target=target,
        rows=np.asarray(rows, dtype=np.int64),
        class_rows=np.asarray(class_rows, dtype=np.int64),
        classes=chosen,
        counts=counts,
        n_classified=len(numbers),
        n_target=len(target.particles),
    )


def selection_document(selection: ClassSelection, origins: bool = False) -> StarDocument:
    """The selected rows of the target STAR file, every other block and value as written.

    With ``origins``, the classification's :data:`ALIGNMENT_LABELS` values of each particle
    replace (or are added to) the target's, so that ``schedule.search.initial_origins = "input"``
    starts from the 2D origins.

    Raises
    ------
    InputFileError
        When ``origins`` is asked for and the classification has no ``rlnOriginX/YAngst``
        (RELION 3.1+), or the target is a RELION 3.0 file (origins in pixels).
    """
    target, block = selection.target, selection.target.particles
    labels = list(block.labels)
    lines = [block.lines[r] for r in selection.rows.tolist()]
    if origins:
        cls = selection.classification.particles
        for lab in ORIGIN_LABELS:
            if lab not in cls.labels:
                raise InputFileError(
                    selection.classification.path or "<star>",
                    "no 2D origins in Å to carry (a RELION 3.1+ Class2D star has them)",
                    lab,
                )
    if origins and target is not selection.classification:
        if target.is_relion30:
            raise InputFileError(
                target.path or "<star>",
                "a RELION 3.0 file (no data_optics) cannot take origins in Å; select without "
                "--origins, or from the classification alone",
                "data_optics",
            )
        labels = [lab for lab in labels if lab not in STALE_ORIGIN_LABELS]
        labels += [lab for lab in ALIGNMENT_LABELS if lab not in labels]
        source = {lab: cls.labels.index(lab) for lab in ALIGNMENT_LABELS if lab in cls.labels}
        new_lines = []
        for line, cr in zip(lines, selection.class_rows.tolist(), strict=True):
            values = dict(zip(block.labels, split_tokens(line), strict=True))
            ctok = cls.row(cr)
            for lab in ALIGNMENT_LABELS:
                values[lab] = ctok[source[lab]] if lab in source else "0.000000"
            new_lines.append(" ".join(values[lab] for lab in labels))
        lines = new_lines
    out = StarBlock(block.name, labels, lines, block.loop)
    return replace(target, blocks=[out if b is block else b for b in target.blocks])


def write_index_file(path: str | Path, rows: np.ndarray, comment: str = "") -> None:
    """0-based rows as an ``--ind`` file, atomically: ``.txt`` (one per line, ``#`` comment first)
    or ``.pkl`` (a pickled int64 array, cryoDRGN's format)."""
    path = Path(path)
    rows = np.asarray(rows, dtype=np.int64)
    with atomic_path(path) as tmp:
        if path.suffix.lower() in (".pkl", ".pickle"):
            tmp.write_bytes(pickle.dumps(rows, protocol=4))
        else:
            head = "".join(f"# {line}\n" for line in comment.splitlines())
            tmp.write_text(head + "".join(f"{i}\n" for i in rows.tolist()), encoding="utf-8")
