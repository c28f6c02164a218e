"""Issue 22 (also): implausible physical values in a particle table (a negative or zero defocus,
a 1e30 defocus, an origin larger than the box...) give a warning naming the particle and the
field; values that cannot be right for the CTF are refused with one line, exit 2, before
anything is written, by ``run`` (and ``--dry-run``), ``reconstruct`` and ``simulate --like``."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from cryoforge.cli import cli
from cryoforge.errors import InputFileError
from cryoforge.io.physical import check_physical_values
from cryoforge.io.star import read_star
from cryoforge.testing import assert_one_line_error, copy_dataset

# columns of the tiny dataset's data_particles rows (rlnImageName = 0)
DEFOCUS_U, DEFOCUS_V, ORIGIN_X = 1, 2, 10
# cells of its data_optics row
VOLTAGE, CS, AMPLITUDE = 2, 3, 4


def _edit(
    star: Path, particle: dict[int, dict[int, str]] | None = None, optics: dict[int, str] | None = None
):
    """Set cells of particle rows (1-based row → {column: text}) and of the optics row."""
    lines = star.read_text().splitlines()
    for i, ln in enumerate(lines):
        cells = ln.split()
        if optics and cells[:2] == ["1", "opticsGroup1"]:
            for c, v in optics.items():
                cells[c] = v
            lines[i] = " ".join(cells)
        elif particle and cells and "@" in cells[0]:
            row = int(cells[0].split("@")[0])
            for c, v in particle.get(row, {}).items():
                cells[c] = v
            lines[i] = " ".join(cells)
    star.write_text("\n".join(lines) + "\n")
    return star


def _source(star: Path, **options):
    from cryoforge.sources.star import StarSource

    return StarSource(StarSource.Options(path=str(star), **options), None)


def invoke(*a: object):
    return CliRunner().invoke(cli, [str(x) for x in a])


def warnings(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("Warning: ")]


# ----------------------------------------------------------------------------- warnings


def test_implausible_values_warn_naming_the_field_the_particle_and_how_many(tiny, tmp_path):
    t = copy_dataset(tiny, tmp_path / "d")
    _edit(
        t["star"],
        {3: {DEFOCUS_U: "2e5"}, 9: {DEFOCUS_U: "3e5", ORIGIN_X: "100"}, 11: {ORIGIN_X: "-64.5"}},
        {VOLTAGE: "300000", CS: "-0.5", AMPLITUDE: "-0.07"},
    )
    notes = check_physical_values(read_star(t["star"]), 16, ctf_in_use=True)
    text = "\n".join(notes)
    assert len(notes) == 5, text
    defocus = next(n for n in notes if "[rlnDefocusU]" in n)
    assert "2 of 24 particles have a defocus above 1e+05 Å" in defocus
    assert "particle 3 (000003@particles.mrcs), has 200000 Å" in defocus
    assert "[rlnDefocusV]" not in text  # V is plausible
    volt = next(n for n in notes if "[rlnVoltage]" in n)
    assert "24 of 24 particles" in volt and "particle 1 (000001@particles.mrcs)" in volt
    assert "300000 kV" in volt and "in kV" in volt
    assert any("[rlnSphericalAberration]" in n and "negative" in n for n in notes)
    assert any("[rlnAmplitudeContrast]" in n and "-0.07" in n for n in notes)
    origin = next(n for n in notes if "[rlnOriginXAngst/YAngst]" in n)
    assert "2 of 24 particles have an origin larger than the box (16 px = 64 Å)" in origin
    assert "particle 9 (000009@particles.mrcs), has (100, " in origin


def test_clean_data_and_ctf_free_tables_give_no_warning(tiny, tmp_path):
    assert check_physical_values(read_star(tiny["star"]), 16, ctf_in_use=True) == []
    assert _source(tiny["star"]).physical_warnings == []
    t = copy_dataset(tiny, tmp_path / "d")  # voltage 0 everywhere: CTF-free (--no-ctf simulations)
    _edit(t["star"], {2: {DEFOCUS_U: "-5"}}, {VOLTAGE: "0"})
    assert _source(t["star"]).ctf is None
    assert check_physical_values(read_star(t["star"]), 16, ctf_in_use=True) == []


def test_a_defocus_of_0_for_every_particle_only_warns(tiny, tmp_path):
    """cryoDRGN's toy data state defocus 0 everywhere: no defocus, not a corrupt table."""
    t = copy_dataset(tiny, tmp_path / "d")
    _edit(t["star"], {i: {DEFOCUS_U: "0", DEFOCUS_V: "0.0"} for i in range(1, 25)})
    (note,) = _source(t["star"]).physical_warnings
    assert "particles.star [rlnDefocusU]: every particle has defocus 0 Å" in note
    assert _source(t["star"], ignore_ctf=True).physical_warnings == []


def test_a_subset_names_the_particle_by_its_row_in_the_file(tiny, tmp_path):
    t = copy_dataset(tiny, tmp_path / "d")
    _edit(t["star"], {20: {ORIGIN_X: "1e4"}})
    ind = tmp_path / "ind.txt"
    ind.write_text("0\n5\n19\n")
    notes = _source(t["star"], ind=str(ind)).physical_warnings
    assert len(notes) == 1 and "1 of 3 particles" in notes[0]
    assert "particle 20 (000020@particles.mrcs)" in notes[0]


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "particle, optics, field, needle",
    [
        ({5: {DEFOCUS_U: "-1000"}}, None, "rlnDefocusU", "particle 5 (000005@particles.mrcs), has -1000 Å"),
        ({6: {DEFOCUS_V: "0"}}, None, "rlnDefocusV", "particle 6 (000006@particles.mrcs), has 0 Å"),
        ({7: {DEFOCUS_U: "1e30"}}, None, "rlnDefocusU", "above 1e+07 Å (1 mm)"),
        (None, {VOLTAGE: "-300"}, "rlnVoltage", "24 of 24 particles have a voltage ≤ 0 kV"),
        (None, {AMPLITUDE: "1.5"}, "rlnAmplitudeContrast", "beyond ±1"),
    ],
)
def test_values_that_cannot_be_right_for_the_ctf_are_refused(tiny, tmp_path, particle, optics, field, needle):
    t = copy_dataset(tiny, tmp_path / "d")
    _edit(t["star"], particle, optics)
    with pytest.raises(InputFileError, match=rf"particles\.star \[{field}\]: .*{re.escape(needle)}"):
        _source(t["star"])
    # ignoring the CTF: a warning, not a refusal
    notes = _source(t["star"], ignore_ctf=True).physical_warnings
    assert any(f"[{field}]" in n and needle in n for n in notes), notes


def test_cryosparc_fields_are_named(tiny, tmp_path):
    from cryoforge.io.cryosparc import write_cs

    t = copy_dataset(tiny, tmp_path / "d")
    table = read_star(t["star"])
    table.ctf = {k: v.copy() for k, v in table.ctf.items()}
    table.ctf["voltage_kv"][3] = 0.0
    table.ctf["defocus_v_angstrom"][4] = 5e5
    write_cs(t["cs"], table, "particles.mrcs")
    with pytest.raises(InputFileError, match=r"particles\.cs \[ctf/accel_kv\]: 1 of 24 .*particle 4 "):
        from cryoforge.sources.cs import CryosparcSource

        CryosparcSource(CryosparcSource.Options(path=str(t["cs"])), None)
    table.ctf["voltage_kv"][3] = 300.0
    write_cs(t["cs"], table, "particles.mrcs")
    notes = CryosparcSource(CryosparcSource.Options(path=str(t["cs"])), None).physical_warnings
    assert len(notes) == 1 and "particles.cs [ctf/df2_A]" in notes[0] and "particle 5 " in notes[0]


# ----------------------------------------------------------------------------- commands


def _sha(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_run_with_a_negative_defocus_exits_2_and_leaves_the_old_run_intact(tiny, tmp_path):
    from cryoforge.io.outputs import write_run_marker

    t = copy_dataset(tiny, tmp_path / "d")
    _edit(t["star"], {5: {DEFOCUS_U: "-1000"}})
    old = tmp_path / "run"
    old.mkdir()
    write_run_marker(old, fresh=True)
    (old / "config.json").write_text("{}\n")
    (old / "map.mrc").write_bytes(b"an earlier run's map")
    before = _sha(old)
    needles = ("particles.star [rlnDefocusU]", "particle 5 (000005@particles.mrcs)", "-1000 Å")
    real = assert_one_line_error(invoke("run", "--particles", t["star"], "-d", old, "--overwrite"), *needles)
    dry = assert_one_line_error(
        invoke("run", "--particles", t["star"], "-d", old, "--overwrite", "--dry-run"), *needles
    )
    assert real == dry
    assert _sha(old) == before
    new = tmp_path / "new"
    assert_one_line_error(invoke("run", "--particles", t["star"], "-d", new), *needles)
    assert not new.exists()


def test_reconstruct_and_simulate_like_give_the_runs_warnings(tiny, tmp_path):
    t = copy_dataset(tiny, tmp_path / "d")
    _edit(t["star"], {4: {DEFOCUS_U: "5e5", ORIGIN_X: "-90"}})
    small = ["-o", "encoder.channels", "[8, 8]", "-o", "encoder.head_hidden", "[16]"]
    dry = invoke("run", "--particles", t["star"], "-d", tmp_path / "r", *small, "--dry-run")
    assert dry.exit_code == 0, dry.output
    want = warnings(dry.output)
    assert len(want) == 2
    assert "particles.star [rlnDefocusU]" in want[0] and "particle 4 (000004@particles.mrcs)" in want[0]
    assert "particles.star [rlnOriginXAngst/YAngst]" in want[1]
    r = invoke("reconstruct", t["star"], "--out", tmp_path / "m.mrc")
    assert r.exit_code == 0, r.output
    assert warnings(r.output) == want
    r = invoke("simulate", t["map"], "--like", t["star"], "-d", tmp_path / "sim")
    assert r.exit_code == 0, r.output
    assert warnings(r.output) == want


def test_reconstruct_and_simulate_like_refuse_a_negative_defocus_unless_the_ctf_is_off(tiny, tmp_path):
    t = copy_dataset(tiny, tmp_path / "d")
    _edit(t["star"], {5: {DEFOCUS_U: "-1000"}})
    needles = ("particles.star [rlnDefocusU]", "particle 5 (000005@particles.mrcs)")
    assert_one_line_error(invoke("reconstruct", t["star"], "--out", tmp_path / "m.mrc"), *needles)
    assert not (tmp_path / "m.mrc").exists()
    assert_one_line_error(invoke("simulate", t["map"], "--like", t["star"], "-d", tmp_path / "sim"), *needles)
    assert not (tmp_path / "sim" / "particles.star").exists()
    for r in (
        invoke("reconstruct", t["star"], "--out", tmp_path / "m.mrc", "--no-ctf"),
        invoke("simulate", t["map"], "--like", t["star"], "-d", tmp_path / "sim", "--no-ctf"),
    ):
        assert r.exit_code == 0, r.output
        (note,) = warnings(r.output)
        assert all(n in note for n in needles), note
