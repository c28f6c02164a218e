"""Plausibility of the physical values in a particle table: defocus, voltage, Cs, amplitude
contrast, pixel size and origins, particle by particle.

Values that cannot be right for the CTF (a defocus ≤ 0 or beyond 1 mm, a voltage ≤ 0, an
amplitude contrast beyond ±1, a pixel size ≤ 0) are refused with one line naming the file, the
field and the first particle; values that are merely implausible (a defocus beyond 10 µm, a
voltage outside 10–3000 kV, a negative or huge Cs, a negative amplitude contrast, an origin
larger than the box) give one warning per field, naming the first particle and how many are
affected. A defocus of 0 for every particle (cryoDRGN's toy data: no defocus) only warns.
Non-finite values never get this far: the readers refuse them
(:func:`cryoforge.io.validate.check_finite`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cryoforge.errors import InputFileError
from cryoforge.io.table import ParticleTable

#: a defocus above this (Å; 10 µm) is implausible for single-particle data: a warning
DEFOCUS_IMPLAUSIBLE_ANGSTROM = 1e5
#: a defocus above this (Å; 1 mm) cannot be a defocus (a unit error, a corrupt value): refused
DEFOCUS_ABSURD_ANGSTROM = 1e7
#: voltages outside this range (kV) are implausible (in V or MV?): a warning
VOLTAGE_RANGE_KV = (10.0, 3000.0)
#: a spherical aberration above this (mm) is implausible (in µm?): a warning
CS_IMPLAUSIBLE_MM = 20.0

RELION_FIELDS = {
    "defocus_u_angstrom": "rlnDefocusU",
    "defocus_v_angstrom": "rlnDefocusV",
    "voltage_kv": "rlnVoltage",
    "cs_mm": "rlnSphericalAberration",
    "amplitude_contrast": "rlnAmplitudeContrast",
    "pixel_size_angstrom": "rlnImagePixelSize",
    "origin_angstrom": "rlnOriginXAngst/YAngst",
}
"""The field that holds each quantity in a RELION STAR file (readers may name others)."""

CRYOSPARC_FIELDS = {
    "defocus_u_angstrom": "ctf/df1_A",
    "defocus_v_angstrom": "ctf/df2_A",
    "voltage_kv": "ctf/accel_kv",
    "cs_mm": "ctf/cs_mm",
    "amplitude_contrast": "ctf/amp_contrast",
    "pixel_size_angstrom": "blob/psize_A",
    "origin_angstrom": "alignments3D/shift",
}
"""The field that holds each quantity in a cryoSPARC ``.cs`` file."""


UNITS = {
    "defocus_u_angstrom": " Å",
    "defocus_v_angstrom": " Å",
    "voltage_kv": " kV",
    "cs_mm": " mm",
    "amplitude_contrast": "",
    "pixel_size_angstrom": " Å/px",
}


def field_names(table: ParticleTable) -> dict[str, str]:
    """Each quantity's field in ``table``'s file: the reader's own names, else by format."""
    base = CRYOSPARC_FIELDS if table.path.suffix.lower() == ".cs" else RELION_FIELDS
    return {**base, **table.fields}


@dataclass(frozen=True)
class _Check:
    quantity: str
    bad: Callable[[np.ndarray], np.ndarray]
    problem: str
    """what the values are, after "N of M particles have ..." (``{limit}`` filled in)"""
    hint: str
    refuse: bool
    ctf: bool = True
    """a CTF value: checked only when the table has a CTF, refused only when it is used"""


_CHECKS = (
    _Check(
        "defocus_u_angstrom",
        lambda v: v <= 0,
        "a defocus ≤ 0",
        "a defocus is > 0 Å (underfocus, RELION's convention); fix the table, or ignore the CTF "
        "(--no-ctf, -o source.ignore_ctf true)",
        True,
    ),
    _Check(
        "defocus_u_angstrom",
        lambda v: v > DEFOCUS_ABSURD_ANGSTROM,
        f"a defocus above {DEFOCUS_ABSURD_ANGSTROM:.0e} Å (1 mm)",
        "not a defocus: a corrupt value, or another unit than Å?",
        True,
    ),
    _Check(
        "defocus_u_angstrom",
        lambda v: (v > DEFOCUS_IMPLAUSIBLE_ANGSTROM) & (v <= DEFOCUS_ABSURD_ANGSTROM),
        f"a defocus above {DEFOCUS_IMPLAUSIBLE_ANGSTROM:.0e} Å (10 µm)",
        "implausible for single particles; is it in Å?",
        False,
    ),
    _Check("voltage_kv", lambda v: v <= 0, "a voltage ≤ 0 kV", "the CTF needs the voltage in kV", True),
    _Check(
        "voltage_kv",
        lambda v: (v > 0) & ((v < VOLTAGE_RANGE_KV[0]) | (v > VOLTAGE_RANGE_KV[1])),
        f"a voltage outside {VOLTAGE_RANGE_KV[0]:g}-{VOLTAGE_RANGE_KV[1]:g} kV",
        "is it in kV (300 for a 300 kV microscope)?",
        False,
    ),
    _Check(
        "cs_mm",
        lambda v: v < 0,
        "a negative spherical aberration",
        "only a Cs corrector gives one; is it right?",
        False,
    ),
    _Check(
        "cs_mm",
        lambda v: v > CS_IMPLAUSIBLE_MM,
        f"a spherical aberration above {CS_IMPLAUSIBLE_MM:g} mm",
        "is it in mm (2.7 for most microscopes)?",
        False,
    ),
    _Check(
        "amplitude_contrast",
        lambda v: np.abs(v) > 1,
        "an amplitude contrast beyond ±1",
        "it is a fraction (0.1 is usual); the CTF is not defined beyond 1",
        True,
    ),
    _Check(
        "amplitude_contrast",
        lambda v: (v < 0) & (v >= -1),
        "a negative amplitude contrast",
        "it is a fraction between 0 and 1 (0.1 is usual)",
        False,
    ),
    _Check(
        "pixel_size_angstrom",
        lambda v: v <= 0,  # (NaN: not in the table, the header gives it)
        "a pixel size ≤ 0",
        "the pixel size is in Å/px",
        True,
        ctf=False,
    ),
)


def check_physical_values(
    table: ParticleTable,
    box: int | None,
    ctf_in_use: bool,
    rows: np.ndarray | None = None,
) -> list[str]:
    """Check every particle's physical values; return the warnings (one line each).

    Parameters
    ----------
    table
        The particles (already read: every value finite).
    box
        The images' side in pixels (for the origins; ``None`` skips that check).
    ctf_in_use
        Whether the CTF will be applied: values that cannot be right for it are refused then,
        and only warned about otherwise. A CTF-free table (no defocus, or every voltage 0) is
        not checked for CTF values.
    rows
        ``(N,)`` 0-based rows of the file that ``table``'s particles come from (a subset),
        for the particle numbers in messages; ``None`` when they are the file's rows.

    Raises
    ------
    InputFileError
        Naming the file, the field, the first particle (its row and image name) and how many
        particles have such a value.
    """
    n = len(table)
    fields = field_names(table)
    has_ctf = table.has_ctf and not np.all(np.asarray(table.ctf["voltage_kv"]) == 0)
    values = dict(table.ctf)
    values["pixel_size_angstrom"] = table.per_particle_pixel_size()
    notes: list[str] = []
    seen: set[tuple[str, str]] = set()
    no_defocus = has_ctf and all(np.all(values[q] == 0) for q in ("defocus_u_angstrom", "defocus_v_angstrom"))
    if (
        no_defocus and ctf_in_use
    ):  # cryoDRGN's toy data: the CTF is the constant of its phase shift and contrast
        notes.append(
            f"{table.path.name} [{fields['defocus_u_angstrom']}]: every particle has defocus 0 Å: "
            "the CTF applied is a constant (no defocus); for CTF-free images, set "
            "-o source.ignore_ctf true (or the voltage to 0)"
        )
    for check in _CHECKS:
        if (check.ctf and not has_ctf) or (no_defocus and check.quantity == "defocus_u_angstrom"):
            continue
        quantities = [check.quantity]
        if check.quantity == "defocus_u_angstrom":
            quantities.append("defocus_v_angstrom")
        for q in quantities:
            name = fields[q]
            if (name, check.problem) in seen:  # (no rlnDefocusV: V is a copy of U)
                continue
            seen.add((name, check.problem))
            v = np.asarray(values[q], dtype=np.float64)
            bad = np.asarray(check.bad(v), dtype=bool)
            if not bad.any():
                continue
            i = int(np.argmax(bad))
            what = (
                f"{int(bad.sum())} of {n} particles have {check.problem}; the first, "
                f"{_particle(table, i, rows)}, has {v[i]:.6g}{UNITS[q]}"
            )
            if check.refuse and (ctf_in_use or not check.ctf):
                raise InputFileError(table.path, f"{what}: {check.hint}", name)
            notes.append(f"{table.path.name} [{name}]: {what}: {check.hint}")
    if table.shifts_angstrom is not None and box:
        extent = box * np.asarray(values["pixel_size_angstrom"], dtype=np.float64)
        off = np.abs(np.asarray(table.shifts_angstrom, dtype=np.float64)).max(1)
        bad = off > extent
        if bad.any():
            i = int(np.argmax(bad))
            x, y = np.asarray(table.shifts_angstrom[i], dtype=np.float64)
            notes.append(
                f"{table.path.name} [{fields['origin_angstrom']}]: {int(bad.sum())} of {n} particles "
                f"have an origin larger than the box ({box} px = {extent[i]:.4g} Å); the first, "
                f"{_particle(table, i, rows)}, has ({x:.6g}, {y:.6g}) Å: the particle is outside "
                "its image; are the origins in Å (or px for rlnOriginX/Y)?"
            )
    return notes


def _particle(table: ParticleTable, i: int, rows: np.ndarray | None) -> str:
    """``particle 7 (000007@stack.mrcs)``: the row in the file (1-based) and its image."""
    row = int(rows[i]) + 1 if rows is not None else i + 1
    name = f" ({table.image_names[i]})" if table.image_names is not None else ""
    return f"particle {row}{name}"


def print_warnings(notes: list[str]) -> None:
    """Each note as ``Warning: ...`` on stderr."""
    for note in notes:
        print(f"Warning: {note}", file=sys.stderr, flush=True)
