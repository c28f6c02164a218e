"""Issue 22, also: ``simulate`` checks the disk and memory it needs before it writes, and says
which options its input makes meaningless."""

from __future__ import annotations

from click.testing import CliRunner

from cryoforge.cli import cli


def invoke(*a: object):
    return CliRunner().invoke(cli, [str(x) for x in a])


def test_a_simulation_too_large_for_the_disk_is_refused_before_it_starts(tmp_path):
    out = tmp_path / "sim"
    r = invoke("simulate", "--demo", "-n", 10**11, "--out", out)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "--n-particles" in lines[0], lines
    assert "on disk" in lines[0] and "free there" in lines[0]
    assert not out.exists()


def test_memory_is_checked_too(tmp_path, monkeypatch):
    import cryoforge.commands.simulate as simulate

    monkeypatch.setattr(simulate, "_memory_available", lambda: 1000)
    r = invoke("simulate", "--demo", "-n", 1000, "--out", tmp_path / "sim")
    assert r.exit_code == 2 and "of memory" in r.output and "available" in r.output, r.output
    assert not (tmp_path / "sim").exists()


def test_ignored_options_are_named(tiny, tmp_path):
    r = invoke("simulate", tiny["map"], "-n", 3, "--box-size", 64, "--pixel-size", 2, "--out", tmp_path / "a")
    assert r.exit_code == 0, r.output
    assert "Warning: --box-size is ignored with a map input" in r.output
    assert "Warning: --pixel-size is ignored with a map input" in r.output
    r = invoke("simulate", "--demo", "--box-size", 64, "-n", 10**11, "--out", tmp_path / "b")
    assert "Warning: --box-size is ignored with --demo" in r.output and r.exit_code == 2
    r = invoke("simulate", tiny["map"], "--like", tiny["star"], "-n", 5, "--out", tmp_path / "c")
    assert r.exit_code == 0, r.output
    assert "Warning: -n is ignored with --like" in r.output
    r = invoke("simulate", tiny["map"], "-n", 3, "--out", tmp_path / "d")
    assert "Warning" not in r.output
