"""STAR files as written, token for token: read, overlay new poses, write (RELION 3.0 → 3.1).

:func:`cryoforge.io.star.read_star` turns a STAR file into typed per-particle arrays; this module
keeps what it does not use. A :class:`StarDocument` holds every block with its labels and the raw
text of each value, so a written file carries every column of the input unchanged except the
ones replaced on purpose (:func:`overlay_poses`): the Euler angles, the origins and, where the
caller resolved them, the image names.

Over 400 lines on purpose: the tokenizer, the quoting rules and the writer are one thing (the
STAR 1.1 grammar as RELION and cryoSPARC read it); split, each half would need the other's rules.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cryoforge.errors import InputFileError
from cryoforge.io.atomic import atomic_path

RELION31_VERSION = 30001
POSE_LABELS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
ORIGIN_LABELS = ("rlnOriginXAngst", "rlnOriginYAngst")
STALE_ORIGIN_LABELS = ("rlnOriginX", "rlnOriginY")  # pixels: RELION 3.0 only

# RELION 3.0 per-particle optics labels that RELION 3.1 moves into ``data_optics``
# (its StarConverter: Q0, beam tilt, Cs, voltage, detector pixel size and magnification), plus the
# plain pixel-size labels some 3.0 writers use.
OPTICS_30_LABELS = (
    "rlnAmplitudeContrast",
    "rlnBeamTiltX",
    "rlnBeamTiltY",
    "rlnSphericalAberration",
    "rlnVoltage",
    "rlnDetectorPixelSize",
    "rlnMagnification",
    "rlnPixelSize",
    "rlnImagePixelSize",
)
# RELION 3.0 pixel-unit labels and their 3.1 Ångström names (converted with the pixel size).
PIXEL_TO_ANGSTROM_LABELS = {
    "rlnOriginX": "rlnOriginXAngst",
    "rlnOriginY": "rlnOriginYAngst",
    "rlnOriginZ": "rlnOriginZAngst",
    "rlnOriginXPrior": "rlnOriginXPriorAngst",
    "rlnOriginYPrior": "rlnOriginYPriorAngst",
    "rlnOriginZPrior": "rlnOriginZPriorAngst",
    "rlnHelicalTrackLength": "rlnHelicalTrackLengthAngst",
}
_VERSION = re.compile(r"^#\s*version\s+(\d+)")


# STAR 1.1 / CIF tokens: a quoted value ends at its quote followed by whitespace (so a quote
# inside a value needs no escape), ``#`` at the start of a token begins a comment, anything else
# runs to the next whitespace (quotes and ``#`` inside a bare word are part of it).
_TOKEN = re.compile(r"""'.*?'(?=\s|$)|".*?"(?=\s|$)|#.*|\S+""")
_RESERVED = re.compile(r"^(data_|loop_|save_|global_|stop_)", re.IGNORECASE)


def split_tokens(line: str) -> list[str]:
    """One STAR data line → its values as written (quoted values keep their quotes)."""
    if '"' not in line and "'" not in line and "#" not in line:
        return line.split()
    return [t for t in _TOKEN.findall(line) if not t.startswith("#")]


def unquote(token: str) -> str:
    """A value as written → the value (``'a b'`` and ``"a b"`` → ``a b``; bare words unchanged)."""
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        return token[1:-1]
    return token


def quote(value: str) -> str:
    """``value`` as a STAR token that reads back as ``value`` (our reader, RELION, gemmi, starfile).

    Bare when it can be; otherwise in double quotes, or single quotes when the value holds a
    double quote. Values with whitespace, an empty value, a leading quote, ``_``, ``$``, ``;``,
    ``[`` or ``]``, a reserved word (``data_``, ``loop_``, ...) and any ``#`` (starfile reads a
    bare ``#`` as a comment) are quoted.

    Raises
    ------
    ValueError
        For a value no single-line STAR token can hold: a line break, or both quote characters
        each followed by whitespace.
    """
    value = str(value)
    if "\n" in value or "\r" in value:
        raise ValueError(f"{value!r}: a line break cannot be written in a STAR file")
    if value and not (
        any(c.isspace() for c in value) or value[0] in "'\"_$;[]" or "#" in value or _RESERVED.match(value)
    ):
        return value
    for q in ('"', "'"):
        if not re.search(q + r"\s", value) and not value.endswith(q):
            if q == '"' and '"' in value and "'" not in value:
                continue  # prefer single quotes around a double quote
            return f"{q}{value}{q}"
    raise ValueError(f"{value!r}: holds both quote characters before whitespace; not a STAR value")


@dataclass
class StarBlock:
    """One ``data_NAME`` block.

    Attributes
    ----------
    name
        The name after ``data_`` (``""`` for a bare ``data_``).
    labels
        Column labels without the leading underscore, e.g. ``rlnImageName``.
    lines
        A loop's data lines as written (one per row, stripped); values are split on demand.
    loop
        ``False`` for a key–value block (then ``lines`` holds the one row of values).
    """

    name: str
    labels: list[str]
    lines: list[str] = field(default_factory=list)
    loop: bool = True

    def __len__(self) -> int:
        return len(self.lines)

    def row(self, i: int) -> list[str]:
        """The values of row ``i`` as written."""
        return split_tokens(self.lines[i]) if self.loop else self.lines[:]

    def column(self, label: str) -> list[str]:
        """Every value of ``label`` as written."""
        j = self.labels.index(label)
        return [self.row(i)[j] for i in range(len(self))] if self.loop else [self.lines[j]]


@dataclass
class StarDocument:
    """A STAR file: its blocks in order and the ``# version`` it declares (``None`` if none)."""

    blocks: list[StarBlock]
    version: int | None = None
    path: Path | None = None

    def block(self, name: str) -> StarBlock | None:
        return next((b for b in self.blocks if b.name == name), None)

    @property
    def particles(self) -> StarBlock:
        """The particle table, chosen as :func:`cryoforge.io.star.read_star` chooses it."""
        named = self.block("particles")
        if named is not None:
            return named
        for b in self.blocks:
            if b.loop and ({"rlnImageName", "rlnDefocusU"} & set(b.labels)):
                return b
        raise InputFileError(self.path or "<star>", "no particle table found", "rlnImageName")

    @property
    def is_relion30(self) -> bool:
        """No ``data_optics`` block: RELION 3.0 (per-particle optics, origins in pixels)."""
        return self.block("optics") is None


def read_star_document(path: str | Path) -> StarDocument:
    """Read a STAR file keeping every block, label and value as written.

    Raises
    ------
    InputFileError
        When the file is missing or a loop row has the wrong number of values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "STAR file not found")
    blocks: list[StarBlock] = []
    version: int | None = None
    cur: StarBlock | None = None
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = (raw.lstrip("\ufeff") if lineno == 1 else raw).strip()  # a byte-order mark: ignored
            if not line:
                continue
            if line.startswith("#"):
                m = _VERSION.match(line)
                if m and version is None:
                    version = int(m.group(1))
                continue
            if line.startswith("data_"):
                cur = StarBlock(line[5:].split()[0] if len(line) > 5 else "", [], [], loop=False)
                blocks.append(cur)
                continue
            if cur is None:
                raise InputFileError(path, f"line {lineno}: value outside a data_ block", "data_")
            if line.startswith("loop_"):
                cur.loop = True
                continue
            if line.startswith("_"):
                parts = line.split(None, 1)
                cur.labels.append(parts[0][1:])
                if not cur.loop:  # key-value block: the value follows the label
                    cur.lines.append(parts[1].strip() if len(parts) > 1 else "")
                continue
            if cur.loop:
                n = len(split_tokens(line))
                if n != len(cur.labels):
                    raise InputFileError(
                        path,
                        f"line {lineno}: {n} values for {len(cur.labels)} columns in data_{cur.name}",
                        "loop_",
                    )
                cur.lines.append(line)
    return StarDocument(blocks, version, path)


def _format_block(block: StarBlock, version: int | None) -> str:
    head = f"\n# version {version}\n" if version is not None else "\n"
    head += f"\ndata_{block.name}\n\n"
    if not block.loop:
        width = max((len(lab) for lab in block.labels), default=0) + 2
        pairs = zip(block.labels, block.lines, strict=True)
        return head + "".join(f"_{lab:<{width}}{v}\n" for lab, v in pairs)
    labels = "".join(f"_{lab} #{i + 1}\n" for i, lab in enumerate(block.labels))
    return head + "loop_\n" + labels + "".join(f"{line}\n" for line in block.lines) + "\n"


def write_star_document(path: str | Path, doc: StarDocument) -> None:
    """Write ``doc`` atomically (temporary file, then rename), a ``# version`` line per block."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for block in doc.blocks:
            fh.write(_format_block(block, doc.version))


def format_float(v: float) -> str:
    """A new value (an angle in degrees, a shift in Å): six decimals, as RELION writes them."""
    return f"{v:.6f}"


def format_exact(v: float) -> str:
    """A derived value (a pixel size, an origin converted to Å) at full double precision."""
    return repr(float(v))


def _float(path: Path | None, label: str, token: str) -> float:
    try:
        return float(token.strip("\"'"))
    except ValueError:
        raise InputFileError(path or "<star>", f"non-numeric value {token!r}", label) from None


def _relion30_to_31(
    doc: StarDocument,
    rows: np.ndarray,
    pixel_size_angstrom: float | None,
    box_size: int | None,
) -> tuple[StarBlock, StarBlock]:
    """RELION 3.0 particle rows → (optics block, particle block) in RELION 3.1 form.

    As RELION's own conversion: one optics group per distinct combination of the per-particle
    optics values, which move into ``data_optics``; the pixel size (``rlnDetectorPixelSize`` ·
    10⁴ / ``rlnMagnification``, or ``rlnPixelSize``) becomes ``rlnImagePixelSize``; pixel-unit
    origins become Å (``rlnOriginX`` → ``rlnOriginXAngst``). Values not in the file get the ones
    cryoforge read them as (amplitude contrast 0.1; CTF-free data 300 kV and 2.7 mm;
    ``pixel_size_angstrom`` when the file has no pixel size).
    """
    parts = doc.particles
    labels = parts.labels
    optics_present = [lab for lab in OPTICS_30_LABELS if lab in labels]
    pos = {lab: labels.index(lab) for lab in labels}
    groups: dict[tuple[float, ...], int] = {}
    first_tokens: list[list[str]] = []
    group_pixel: list[float] = []
    kept = [lab for lab in labels if lab not in optics_present]
    out_labels = [PIXEL_TO_ANGSTROM_LABELS.get(lab, lab) for lab in kept] + ["rlnOpticsGroup"]
    out_lines: list[str] = []
    for r in rows:
        tok = parts.row(int(r))
        key = tuple(_float(doc.path, lab, tok[pos[lab]]) for lab in optics_present)
        g = groups.get(key)
        if g is None:
            g = groups[key] = len(groups)
            first_tokens.append([tok[pos[lab]] for lab in optics_present])
            vals = dict(zip(optics_present, key, strict=True))
            if "rlnImagePixelSize" in vals:
                px = vals["rlnImagePixelSize"]
            elif "rlnDetectorPixelSize" in vals and "rlnMagnification" in vals:
                px = vals["rlnDetectorPixelSize"] * 1e4 / vals["rlnMagnification"]
            elif "rlnPixelSize" in vals:
                px = vals["rlnPixelSize"]
            else:
                px = float(pixel_size_angstrom or 1.0)
            group_pixel.append(px)
        px = group_pixel[g]
        new = [
            format_exact(_float(doc.path, lab, tok[pos[lab]]) * px)
            if lab in PIXEL_TO_ANGSTROM_LABELS
            else tok[pos[lab]]
            for lab in kept
        ]
        out_lines.append(" ".join([*new, str(g + 1)]))
    has_ctf = "rlnDefocusU" in labels
    defaults = {
        "rlnVoltage": "300.000000" if not has_ctf else None,
        "rlnSphericalAberration": "2.700000" if not has_ctf else None,
        "rlnAmplitudeContrast": "0.100000",
    }
    olabels = ["rlnOpticsGroup", "rlnOpticsGroupName"]
    pixel_labels = ("rlnDetectorPixelSize", "rlnMagnification", "rlnPixelSize", "rlnImagePixelSize")
    carried = [lab for lab in optics_present if lab not in pixel_labels]
    olabels += carried
    missing = [lab for lab, d in defaults.items() if lab not in optics_present and d is not None]
    olabels += [*missing, "rlnImagePixelSize"]
    if box_size:
        olabels.append("rlnImageSize")
    olabels.append("rlnImageDimensionality")
    olines = []
    for g, tokens in enumerate(first_tokens):
        vals = dict(zip(optics_present, tokens, strict=True))
        line = [str(g + 1), f"opticsGroup{g + 1}"] + [vals[lab] for lab in carried]
        line += [defaults[lab] for lab in missing] + [format_exact(group_pixel[g])]
        line += ([str(int(box_size))] if box_size else []) + ["2"]
        olines.append(" ".join(line))
    return StarBlock("optics", olabels, olines), StarBlock("particles", out_labels, out_lines)


def overlay_poses(
    doc: StarDocument,
    rows: Sequence[int] | np.ndarray | None = None,
    rotations: np.ndarray | None = None,
    shifts_angstrom: np.ndarray | None = None,
    image_names: Sequence[str] | None = None,
    pixel_size_angstrom: float | None = None,
    box_size: int | None = None,
) -> StarDocument:
    """The particles ``rows`` of ``doc`` with new poses, every other value as written.

    Parameters
    ----------
    doc
        The input STAR file (:func:`read_star_document`).
    rows
        ``(M,)`` 0-based rows of the particle table to keep, in output order (default: all).
    rotations
        ``(M, 3, 3)`` RELION rotation matrices, written as ``rlnAngleRot/Tilt/Psi`` (degrees);
        ``None`` keeps the file's angles.
    shifts_angstrom
        ``(M, 2)`` origins ``(x, y)`` in Å (RELION's sign), written as ``rlnOriginX/YAngst``;
        ``None`` keeps the file's (zero when ``rotations`` are given and the file has none).
    image_names
        ``(M,)`` replacement ``rlnImageName`` values (e.g. absolute ``index@/path/stack.mrcs``).
    pixel_size_angstrom, box_size
        For RELION 3.0 inputs: the pixel size to use when the file has none, and the image side
        for ``rlnImageSize``.

    Returns
    -------
    StarDocument
        RELION 3.1+ form: the input's own version and optics groups (all kept, with their own
        values); a RELION 3.0 input is converted (see :func:`_relion30_to_31`).
    """
    parts = doc.particles
    rows = np.arange(len(parts)) if rows is None else np.asarray(rows, dtype=np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= len(parts)):
        raise InputFileError(
            doc.path or "<star>", f"row {int(rows.max()) + 1} requested, the file has {len(parts)}", "rows"
        )
    if doc.is_relion30:
        optics, parts = _relion30_to_31(doc, rows, pixel_size_angstrom, box_size)
        blocks = [optics] + [parts if b is doc.particles else b for b in doc.blocks]
        version = RELION31_VERSION
        rows = np.arange(len(parts))
    else:
        blocks = list(doc.blocks)
        version = doc.version or RELION31_VERSION
    labels = list(parts.labels)
    new_values: dict[str, list[str]] = {}
    if rotations is not None:
        import torch

        from cryoforge.ops.rotations import matrix_to_euler_relion

        angles = matrix_to_euler_relion(torch.as_tensor(np.asarray(rotations, dtype=np.float64)))
        for lab, a in zip(POSE_LABELS, angles, strict=True):
            new_values[lab] = [format_float(v) for v in a.numpy()]
        if shifts_angstrom is None and not set(ORIGIN_LABELS) <= set(labels):
            shifts_angstrom = np.zeros((len(rows), 2))
    if shifts_angstrom is not None:
        sh = np.asarray(shifts_angstrom, dtype=np.float64)
        for lab, col in zip(ORIGIN_LABELS, sh.T, strict=True):
            new_values[lab] = [format_float(v) for v in col]
        labels = [lab for lab in labels if lab not in STALE_ORIGIN_LABELS]
    if image_names is not None:
        new_values["rlnImageName"] = [quote(str(n)) for n in image_names]
    for lab, vals in new_values.items():
        if len(vals) != len(rows):
            raise ValueError(f"{lab}: {len(vals)} values for {len(rows)} rows")
        if lab not in labels:
            labels.append(lab)
    # per output column: the new values, or where the value is in the input row
    getters = [
        (new_values[lab], 0) if lab in new_values else (None, parts.labels.index(lab)) for lab in labels
    ]
    src = parts.lines
    lines = []
    for k, r in enumerate(rows.tolist()):
        tok = split_tokens(src[r])
        lines.append(" ".join([tok[j] if vals is None else vals[k] for vals, j in getters]))
    out = StarBlock("particles" if doc.is_relion30 else parts.name, labels, lines)
    target = parts if doc.is_relion30 else doc.particles
    blocks = [out if b is target else b for b in blocks]
    return replace(doc, blocks=blocks, version=version)
