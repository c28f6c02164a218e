"""Every star and cs file we write reads back, by our reader and by starfile, as the same table.

Property tests over generated image paths: spaces, unicode, quotes, ``#``, reserved words. The
STAR side follows STAR 1.1 quoting (what RELION and gemmi read). starfile cannot hold every STAR
value: it turns every ``'`` of a table into ``"``, and reads a double quote inside a quoted
value only when doubled (not STAR); those values are checked against our reader alone.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import starfile
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cryoforge.io.cryosparc import read_cs, write_cs
from cryoforge.io.star import read_star, write_star
from cryoforge.io.star_document import overlay_poses, quote, read_star_document, unquote, write_star_document
from cryoforge.io.table import CTF_FIELDS, ParticleTable

# a path component: any character a file name may hold except a line break (a STAR value is one line)
_COMPONENT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/\n\r"),
    min_size=1,
    max_size=12,
)
_PATHS = st.lists(_COMPONENT, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts) + ".mrcs")
_EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _starfile_can_hold(value: str) -> bool:
    """What starfile reads back unchanged: no ``'``; a ``"`` only in a value needing no quotes."""
    return "'" not in value and ('"' not in value or quote(value) == value) and value.isprintable()


def _table(names: list[str]) -> ParticleTable:
    n = len(names)
    rng = np.random.default_rng(0)
    ctf = {
        k: np.full(n, v)
        for k, v in zip(CTF_FIELDS, (1.5e4, 1.4e4, 10.0, 300.0, 2.7, 0.1, 0.0, 0.0), strict=True)
    }
    q, _ = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    rotations = q * np.sign(np.linalg.det(q))[:, None, None]
    return ParticleTable(
        path=Path("in.star"),
        image_names=np.array(names, dtype=object),
        ctf=ctf,
        rotations=rotations,
        shifts_angstrom=rng.normal(size=(n, 2)),
        pixel_size_angstrom=3.0,
        box_size=32,
        extra={"rlnMicrographName": np.array([f"{p[:-5]}.mrc" for p in names[::-1]], dtype=object)},
    )


def _names(paths: list[str]) -> list[str]:
    return [f"{i + 1:06d}@{p}" for i, p in enumerate(paths)]


def _check_star(path: Path, names: list[str], micrographs: list[str]) -> None:
    back = read_star(path)
    assert back.image_names.tolist() == names
    assert back.extra and read_star_document(path).particles.column("rlnMicrographName") == [
        quote(m) for m in micrographs
    ]
    assert [unquote(v) for v in read_star_document(path).particles.column("rlnImageName")] == names
    # starfile splits every row itself: one value it cannot hold breaks the whole loop's parse
    # (a row of the wrong length), so it is asked to read a file only when it can hold every row
    if all(_starfile_can_hold(a + b) for a, b in zip(names, micrographs, strict=True)):
        df = starfile.read(path, always_dict=True)["particles"]
        assert [str(v) for v in df["rlnImageName"]] == names
        assert [str(v) for v in df["rlnMicrographName"]] == micrographs


@_EXAMPLES
@given(st.lists(_PATHS, min_size=1, max_size=4))
@example(["/0.mrcs", '/"/ .mrcs'])  # one row starfile cannot split once made the check itself fail
def test_written_star_reads_back_for_any_path(paths):
    names = _names(paths)
    table = _table(names)
    micrographs = table.extra["rlnMicrographName"].tolist()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "p.star"
        write_star(out, table)
        _check_star(out, names, micrographs)
        # the poses.star path: an input document with its image names replaced
        again = Path(tmp) / "poses.star"
        doc = overlay_poses(
            read_star_document(out), None, table.rotations, table.shifts_angstrom, names[::-1]
        )
        write_star_document(again, doc)
        _check_star(again, names[::-1], micrographs)
        np.testing.assert_allclose(read_star(again).rotations, table.rotations, atol=1e-5)


@_EXAMPLES
@given(_PATHS, st.integers(0, 300))
def test_written_cs_reads_back_for_any_path(path, pad):
    stack = "/" + "x" * pad + path  # past cryoSPARC's usual 256 bytes too
    table = _table(_names([path, path]))
    with tempfile.TemporaryDirectory() as tmp:
        write_cs(Path(tmp) / "p.cs", table, stack)
        back = read_cs(Path(tmp) / "p.cs")
    assert back.image_names.tolist() == _names([stack, stack])


@pytest.mark.parametrize(
    "value",
    [
        "a b",
        "",
        "it's",
        "it's here",
        'say "x"',
        'say "x" it\'s',
        "a#b",
        "#a",
        "_a",
        "data_x",
        "loop_",
        "ü é",
        "$x",
    ],
)
def test_quote_round_trips_through_the_tokenizer(value):
    from cryoforge.io.star_document import split_tokens

    assert [unquote(t) for t in split_tokens(f"{quote(value)} 1.5 {quote(value)}")] == [value, "1.5", value]


def test_space_in_an_absolute_image_name_is_quoted(tmp_path):
    names = ["000001@/data/my stack/p.mrcs", "000002@/data/my stack/p.mrcs"]
    write_star(tmp_path / "p.star", _table(names))
    assert '"000001@/data/my stack/p.mrcs"' in (tmp_path / "p.star").read_text()
    assert read_star(tmp_path / "p.star").image_names.tolist() == names


def test_a_value_star_cannot_hold_is_refused():
    with pytest.raises(ValueError, match="line break"):
        quote("a\nb")
