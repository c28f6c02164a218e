"""RELION STAR tables (3.0, 3.1 with optics groups, 5) → :class:`ParticleTable`, and back."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from cryoforge.errors import InputFileError
from cryoforge.io.star_document import (
    RELION31_VERSION,
    StarBlock,
    StarDocument,
    format_exact,
    quote,
    read_star_document,
    unquote,
    write_star_document,
)
from cryoforge.io.table import ParticleTable
from cryoforge.io.validate import check_finite, read_text_file
from cryoforge.ops.rotations import euler_relion_to_matrix, matrix_to_euler_relion

OPTICS_FIELDS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")

JUNK_COLUMN = "cryoforgeJunk"
"""The star column (``_cryoforgeJunk``) that flags junk images (1) among true particles (0), as
``cryoforge simulate --junk-fraction`` writes it; ``cryoforge evaluate`` leaves flagged particles
out of its pose errors."""

EXTRA_PREFIXES = ("rln", "cryoforge")
"""Columns of ``ParticleTable.extra`` that :func:`table_document` writes: RELION's, and cryoforge's
own (``_cryoforgeJunk``, the simulator's junk flag), which :func:`read_star` reads back into
``extra``. RELION reads a star with labels it does not know (it skips them), as do cryoDRGN and
starfile."""


def _numeric(column: pd.Series) -> pd.Series:
    """A column's values: numbers when every value is one (as starfile reads them), else text."""
    try:
        return pd.to_numeric(column)
    except (ValueError, TypeError):
        return column


def _read_blocks(path: Path) -> dict[str, pd.DataFrame]:
    """Every loop of a STAR file as a table of unquoted values (STAR 1.1 quoting, as RELION)."""
    read_text_file(path, "STAR file")  # exists, readable, UTF-8 (else one line naming the byte)
    tables: dict[str, pd.DataFrame] = {}
    for block in read_star_document(path).blocks:
        if not block.loop:
            continue
        if block.name in tables:  # which one is meant? (a merge of two files, or an edit gone wrong)
            raise InputFileError(path, f"the table data_{block.name} appears twice", f"data_{block.name}")
        seen: set[str] = set()
        for label in block.labels:
            if label in seen:
                raise InputFileError(path, f"column appears twice in data_{block.name}", label)
            seen.add(label)
        tables[block.name] = _loop_table(block)
    return tables


def _loop_table(block: StarBlock) -> pd.DataFrame:
    text = "\n".join(block.lines)
    if not block.lines:
        return pd.DataFrame({label: pd.Series([], dtype=object) for label in block.labels})
    if not any(c in text for c in "'\"#"):  # bare words only: split on whitespace (C speed)
        raw = pd.read_csv(
            io.StringIO(text),
            sep=r"\s+",
            header=None,
            names=range(len(block.labels)),
            dtype=object,
            quoting=csv.QUOTE_NONE,
            na_filter=False,
            engine="c",
        )
        columns = [raw[j] for j in range(len(block.labels))]
    else:
        rows = [[unquote(t) for t in block.row(i)] for i in range(len(block))]
        columns = [pd.Series(c, dtype=object) for c in zip(*rows, strict=True)]
    return pd.DataFrame({label: _numeric(c) for label, c in zip(block.labels, columns, strict=True)})


def _check_group_numbers(path: Path, block: str, column: pd.Series) -> None:
    """``rlnOpticsGroup`` holds whole numbers (RELION's group ids), else one line naming the row."""
    values = pd.to_numeric(column, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values) | (values != np.round(values))
    if bad.any():
        i = int(np.argmax(bad))
        raise InputFileError(
            path,
            f"data_{block} row {i + 1}: {column.iloc[i]!r} is not an optics group number",
            "rlnOpticsGroup",
        )


def read_star(path: str | Path, box_size: int | None = None) -> ParticleTable:
    """Read particles, CTF, poses and image references from a RELION STAR file.

    Parameters
    ----------
    path
        RELION 3.0 (one table), 3.1 or 5 (``data_optics`` + ``data_particles``) STAR file.
    box_size
        Image side in pixels when the file does not say (RELION 3.0); otherwise from
        ``rlnImageSize`` or later from the stack header.

    Raises
    ------
    InputFileError
        Naming the file and the missing or malformed column.
    """
    path = Path(path)
    blocks = _read_blocks(path)
    if "particles" in blocks:
        parts = blocks["particles"].copy()
    else:
        tables = [b for b in blocks.values() if "rlnImageName" in b.columns or "rlnDefocusU" in b.columns]
        if not tables:
            raise InputFileError(path, "no particle table found", "rlnImageName")
        parts = tables[0].copy()
    if len(parts) == 0:
        block = "data_particles" if "particles" in blocks else "the particle table"
        raise InputFileError(path, "no particles: the table has a header but no rows", block)
    if "optics" in blocks:
        optics = blocks["optics"]
        if "rlnOpticsGroup" not in parts.columns:
            raise InputFileError(path, "particles table lacks the column", "rlnOpticsGroup")
        if "rlnOpticsGroup" not in optics.columns:
            raise InputFileError(path, "data_optics lacks the column", "rlnOpticsGroup")
        for block, table in (("optics", optics), ("particles", parts)):
            _check_group_numbers(path, block, table["rlnOpticsGroup"])
        twice = optics["rlnOpticsGroup"][optics["rlnOpticsGroup"].duplicated()]
        if len(twice):  # a merge would double every particle of that group
            raise InputFileError(
                path, f"optics group {twice.iloc[0]} is defined twice in data_optics", "rlnOpticsGroup"
            )
        keep = [c for c in optics.columns if c not in parts.columns or c == "rlnOpticsGroup"]
        merged = parts.merge(optics[keep], on="rlnOpticsGroup", how="left", sort=False)
        if merged[keep[1]].isna().any() if len(keep) > 1 else False:
            raise InputFileError(
                path, "a particle refers to an optics group that is not defined", "rlnOpticsGroup"
            )
        parts = merged
    n = len(parts)

    def col(name: str, default: float | None = None, positive: bool = False) -> np.ndarray:
        if name in parts.columns:
            values = pd.to_numeric(parts[name], errors="coerce").to_numpy(np.float64)
            missing = np.isnan(values) & parts[name].notna().to_numpy()
            if missing.any():
                text = parts[name].astype(str).str.strip().str.lower().to_numpy()
                missing &= text != "nan"
            if missing.any():  # a word where a number belongs: quote it
                i = int(np.argmax(missing))
                raise InputFileError(path, f"particle {i + 1}: {parts[name].iloc[i]!r} is not a number", name)
            return check_finite(path, name, values, positive)
        if default is None:
            raise InputFileError(path, "required column missing", name)
        return np.full(n, default, dtype=np.float64)

    if "rlnImagePixelSize" in parts.columns:
        pixel = col("rlnImagePixelSize", positive=True)
    elif "rlnDetectorPixelSize" in parts.columns and "rlnMagnification" in parts.columns:
        pixel = col("rlnDetectorPixelSize", positive=True) * 1e4 / col("rlnMagnification", positive=True)
    elif "rlnPixelSize" in parts.columns:
        pixel = col("rlnPixelSize", positive=True)
    else:
        pixel = np.full(n, np.nan)
    pixel_size = float(np.median(pixel)) if n and np.isfinite(pixel).all() else None
    if "rlnImageSize" in parts.columns:
        box_size = int(col("rlnImageSize", positive=True)[0])

    has_ctf = "rlnDefocusU" in parts.columns  # no defocus: CTF-free data, whatever the voltage
    ctf = {
        "defocus_u_angstrom": col("rlnDefocusU", None if has_ctf else 0.0),
        "defocus_v_angstrom": col("rlnDefocusV", None)
        if "rlnDefocusV" in parts.columns
        else col("rlnDefocusU", None if has_ctf else 0.0),
        "astigmatism_angle_deg": col("rlnDefocusAngle", 0.0),
        "voltage_kv": col("rlnVoltage", None if has_ctf else 300.0),
        "cs_mm": col("rlnSphericalAberration", None if has_ctf else 2.7),
        "amplitude_contrast": col("rlnAmplitudeContrast", 0.1),  # RELION's default
        "phase_shift_deg": col("rlnPhaseShift", 0.0),
        "bfactor_angstrom2": col("rlnCtfBfactor", 0.0),
    }
    rotations = shifts = None
    if {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"} <= set(parts.columns):
        import torch

        rotations = euler_relion_to_matrix(
            torch.tensor(col("rlnAngleRot")),
            torch.tensor(col("rlnAngleTilt")),
            torch.tensor(col("rlnAnglePsi")),
        ).numpy()
    # origins without angles (a re-extraction, or 2D origins from select-classes) still count
    if "rlnOriginXAngst" in parts.columns:
        shifts = np.stack([col("rlnOriginXAngst"), col("rlnOriginYAngst")], 1)
    elif "rlnOriginX" in parts.columns:
        if pixel_size is None:
            raise InputFileError(path, "rlnOriginX needs a pixel size", "rlnDetectorPixelSize")
        shifts = np.stack([col("rlnOriginX"), col("rlnOriginY")], 1) * pixel[:, None]
    elif rotations is not None:
        shifts = np.zeros((n, 2))
    names = parts["rlnImageName"].astype(str).to_numpy() if "rlnImageName" in parts.columns else None
    fields = {"defocus_v_angstrom": "rlnDefocusV" if "rlnDefocusV" in parts.columns else "rlnDefocusU"}
    for c in ("rlnImagePixelSize", "rlnDetectorPixelSize", "rlnPixelSize"):
        if c in parts.columns:
            fields["pixel_size_angstrom"] = c
            break
    if "rlnOriginX" in parts.columns and "rlnOriginXAngst" not in parts.columns:
        fields["origin_angstrom"] = "rlnOriginX/Y"
    return ParticleTable(
        path=path,
        image_names=names,
        ctf=ctf,
        rotations=rotations,
        shifts_angstrom=shifts,
        pixel_size_angstrom=pixel_size,
        box_size=box_size,
        pixel_sizes_angstrom=pixel if pixel_size is not None else None,
        extra={
            **({"rlnOpticsGroup": parts["rlnOpticsGroup"].to_numpy()} if "rlnOpticsGroup" in parts else {}),
            **{c: parts[c].to_numpy() for c in parts.columns if str(c).startswith("cryoforge")},
        },
        has_ctf=has_ctf,
        fields=fields,
    )


def table_document(table: ParticleTable) -> StarDocument:
    """``table`` as a RELION 3.1 document (``data_optics`` + ``data_particles``).

    Poses are written as RELION Euler angles (degrees) and ``rlnOriginX/YAngst`` (Å), CTF as
    ``rlnDefocusU/V/Angle``, ``rlnPhaseShift``, ``rlnCtfBfactor``; one optics group per distinct
    (voltage, Cs, amplitude contrast, pixel size), each with its own values.
    """
    n = len(table)
    if table.pixel_size_angstrom is None or table.box_size is None:
        raise ValueError("write_star needs the pixel size and box size")
    px = table.per_particle_pixel_size()
    px = np.where(np.isfinite(px), px, table.pixel_size_angstrom)
    key = np.stack([table.ctf[k] for k in ("voltage_kv", "cs_mm", "amplitude_contrast")] + [px], 1)
    if not table.has_ctf:  # keep the optics table valid for RELION: no zero voltage or Cs
        key[:, :3] = np.where(key[:, :3] > 0, key[:, :3], np.array([300.0, 2.7, 0.1]))
    uniq, group = np.unique(key, axis=0, return_inverse=True)
    group = group.reshape(-1)
    optics = StarBlock(
        "optics",
        [
            "rlnOpticsGroup",
            "rlnOpticsGroupName",
            "rlnVoltage",
            "rlnSphericalAberration",
            "rlnAmplitudeContrast",
            "rlnImagePixelSize",
            "rlnImageSize",
            "rlnImageDimensionality",
        ],
        [
            f"{g + 1} opticsGroup{g + 1} {u[0]:.6f} {u[1]:.6f} {u[2]:.6f} {format_exact(u[3])} "
            f"{int(table.box_size)} 2"
            for g, u in enumerate(uniq)
        ],
    )
    f6 = lambda a: [f"{v:.6f}" for v in np.asarray(a, dtype=np.float64)]
    cols: dict[str, list[str]] = {}
    if table.image_names is not None:
        cols["rlnImageName"] = [quote(str(v)) for v in table.image_names]
    if table.has_ctf:  # CTF-free data are written without defocus columns (RELION reads them so)
        for label, k in (
            ("rlnDefocusU", "defocus_u_angstrom"),
            ("rlnDefocusV", "defocus_v_angstrom"),
            ("rlnDefocusAngle", "astigmatism_angle_deg"),
            ("rlnPhaseShift", "phase_shift_deg"),
            ("rlnCtfBfactor", "bfactor_angstrom2"),
        ):
            cols[label] = f6(table.ctf[k])
    cols["rlnOpticsGroup"] = [str(g + 1) for g in group]
    if table.rotations is not None:
        import torch

        angles = matrix_to_euler_relion(torch.as_tensor(table.rotations))
        for label, a in zip(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"), angles, strict=True):
            cols[label] = f6(a.numpy())
    if table.rotations is not None or table.shifts_angstrom is not None:
        sh = table.shifts_angstrom if table.shifts_angstrom is not None else np.zeros((n, 2))
        cols["rlnOriginXAngst"], cols["rlnOriginYAngst"] = f6(sh[:, 0]), f6(sh[:, 1])
    for k, v in table.extra.items():
        if k.startswith(EXTRA_PREFIXES) and k not in cols:
            v = np.asarray(v)
            cols[k] = f6(v) if np.issubdtype(v.dtype, np.floating) else [quote(str(x)) for x in v]
    lines = [" ".join(row) for row in zip(*cols.values(), strict=True)]
    return StarDocument([optics, StarBlock("particles", list(cols), lines)], RELION31_VERSION)


def write_star(path: str | Path, table: ParticleTable) -> None:
    """Write ``table`` as a RELION 3.1 STAR file atomically (see :func:`table_document`)."""
    write_star_document(path, table_document(table))
