"""Nothing the user has is destroyed: refusals, run markers, the lock, fresh logs, file modes.

Every refusal is checked the same way: exit code 2, one line naming the file and the option,
and the checksums of every file that was there before are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cryoforge.cli import cli
from cryoforge.engine.checkpoint import load_checkpoint
from cryoforge.errors import InputFileError
from cryoforge.io.outputs import LOCK, MARKER, RunLock, remove_stale_temp_files, run_dir_kind
from cryoforge.testing import TINY_RUN

SMALL = {
    **TINY_RUN,
    "train.max_steps": 3,
}


def small_args(**over) -> list[str]:
    args: list[str] = []
    for k, v in {**SMALL, **over}.items():
        args += ["-o", k, json.dumps(v)]
    return args


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def checksums(*folders: Path) -> dict[Path, str]:
    """sha256 of every file under ``folders``."""
    return {
        p: hashlib.sha256(p.read_bytes()).hexdigest()
        for f in folders
        for p in sorted(Path(f).rglob("*"))
        if p.is_file()
    }


def assert_refused(r, *words: str) -> None:
    """Exit code 2 and one line holding each of ``words`` (file names and the option)."""
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert "Traceback" not in r.output


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    """A writable copy of a tiny simulated dataset (``particles.star``/``.mrcs``, ``map.mrc``)."""
    from cryoforge.testing import write_tiny_dataset

    return write_tiny_dataset(tmp_path / "sim")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny) -> Path:
    """A finished 3-step run on the session's tiny dataset (copy it before changing it)."""
    d = tmp_path_factory.mktemp("trained") / "run"
    r = invoke("run", "--particles", tiny["star"], "-d", d, *small_args())
    assert r.exit_code == 0, r.output
    return d


@pytest.fixture
def run_copy(trained: Path, tmp_path: Path) -> Path:
    d = tmp_path / "run"
    shutil.copytree(trained, d)
    return d


# ----------------------------------------------------------------------------- the four reported cases


def test_reconstruct_never_writes_over_its_particle_stack(data):
    sim = data["star"].parent
    before = checksums(sim)
    for extra in ([], ["--overwrite"]):
        r = invoke("reconstruct", data["star"], "--out", data["mrcs"], *extra)
        assert_refused(r, "particles.mrcs", "[--out]", "input")
    r = invoke("reconstruct", data["star"], "--out", data["star"], "--overwrite")
    assert_refused(r, "particles.star", "[--out]", "input")
    assert checksums(sim) == before


def test_infer_never_writes_over_its_input_star(run_copy, data):
    sim = data["star"].parent
    before = checksums(sim, run_copy)
    for extra in ([], ["--overwrite"]):
        r = invoke("infer", run_copy, "--particles", data["star"], "--out", data["star"], *extra)
        assert_refused(r, "particles.star", "[--out]", "input")
    r = invoke("infer", run_copy, "--particles", data["star"], "--out", data["mrcs"], "--overwrite")
    assert_refused(r, "particles.mrcs", "[--out]")
    for own in ("config.json", "checkpoint.pt"):
        r = invoke("infer", run_copy, "--out", run_copy / own, "--overwrite")
        assert_refused(r, own, "[--out]", "input")
    assert checksums(sim, run_copy) == before


def test_run_into_a_simulation_folder_is_refused(data):
    sim = data["star"].parent
    before = checksums(sim)
    for extra in ([], ["--overwrite"]):
        r = invoke("run", "--particles", data["star"], "-d", sim, *small_args(), *extra)
        assert_refused(r, str(sim), "[--output-dir]", "not a cryoforge run")
    assert checksums(sim) == before
    assert not (sim / MARKER).exists() and not (sim / "config.json").exists()


def test_simulate_into_a_run_is_refused(run_copy):
    before = checksums(run_copy)
    for extra in ([], ["--overwrite"]):
        r = invoke("simulate", "--demo", "-n", "3", "--out", run_copy, *extra)
        assert_refused(r, str(run_copy), "[--output-dir]", "run folder")
    assert checksums(run_copy) == before


# ----------------------------------------------------------------------------- --overwrite elsewhere


def test_existing_outputs_need_overwrite(data, run_copy, tmp_path):
    """reconstruct, infer, evaluate, simulate: an existing output is kept; --overwrite replaces it."""
    sim = data["star"].parent
    rec = tmp_path / "rec.mrc"
    rec.write_bytes(b"mine")
    inferred = run_copy / "inferred_poses.star"
    inferred.write_text("mine")
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "metrics.json").write_text("{}")
    cases = [
        (["reconstruct", data["star"], "--out", rec], rec),
        (["infer", run_copy], inferred),
        (["evaluate", data["map"], "--ref", data["map"], "--out", ev], ev / "metrics.json"),
        (["simulate", sim / "truth.mrc", "-n", "3", "--out", sim], sim / "particles.mrcs"),
    ]
    for args, target in cases:
        before = checksums(sim, run_copy, tmp_path)
        r = invoke(*args)
        option = "[--out]" if args[0] in ("reconstruct", "infer") else "[--output-dir]"
        assert_refused(r, target.name, option, "--overwrite")
        assert checksums(sim, run_copy, tmp_path) == before
    for args, target in cases[:3]:
        old = target.read_bytes()
        r = invoke(*args, "--overwrite")
        assert r.exit_code == 0, r.output
        assert target.read_bytes() != old


def test_simulate_never_overwrites_its_input_map(data):
    sim = data["star"].parent
    before = checksums(sim)
    r = invoke("simulate", data["map"], "-n", "3", "--out", sim, "--overwrite")
    assert_refused(r, "map.mrc", "[--output-dir]", "input")
    assert checksums(sim) == before


def test_run_refuses_a_ground_truth_inside_its_outputs(run_copy, tiny):
    before = checksums(run_copy)
    r = invoke(
        "run", "--particles", tiny["star"], "-d", run_copy, "--overwrite",
        *small_args(ground_truth_map=str(run_copy / "map.mrc")),
    )  # fmt: skip
    assert_refused(r, "[--output-dir]", "map.mrc")
    assert checksums(run_copy) == before


# ----------------------------------------------------------------------------- run folders


def test_a_run_marks_its_folder_first_and_a_finished_run_is_kept(run_copy, tiny):
    marker = json.loads((run_copy / MARKER).read_text())
    assert marker["cryoforge_run"] == 1 and marker["version"] and marker["created"]
    assert marker["data"] == {"n_particles": 24, "image_size": 16, "pixel_size_angstrom": 4.0}
    assert run_dir_kind(run_copy) == "run" and not (run_copy / LOCK).exists()
    before = checksums(run_copy)
    r = invoke("run", "--particles", tiny["star"], "-d", run_copy, *small_args())
    assert_refused(r, str(run_copy), "[--output-dir]", "already holds a run", "--resume", "--overwrite")
    assert checksums(run_copy) == before


def test_demo_marks_its_run_before_simulating(tmp_path, monkeypatch):
    """``run --demo`` claims ``demo_run/`` (marker) before the data appear in ``demo_run/data``."""
    import cryoforge.simulation.demo as demo

    seen = {}

    def fake_simulate(input_path, out_dir, settings):
        seen["marker"] = (tmp_path / "demo_run" / MARKER).is_file()
        raise demo_error

    from cryoforge.errors import ConfigError

    demo_error = ConfigError("stop after the claim")
    monkeypatch.setattr(demo, "simulate", fake_simulate)
    monkeypatch.chdir(tmp_path)
    r = invoke("run", "--demo")
    assert r.exit_code == 2 and "stop after the claim" in r.output
    assert seen == {"marker": True}
    assert run_dir_kind(tmp_path / "demo_run") == "run"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    r = invoke("run", "--demo", "-d", tmp_path / "other")
    assert_refused(r, "other", "not a cryoforge run")
    assert not (tmp_path / "other" / MARKER).exists()


def test_failed_start_leaves_no_stub_that_blocks_the_retry(data, tmp_path):
    """A start that fails its checks writes nothing; one that fails mid-training leaves a stub
    (marker, no checkpoint) that a plain retry replaces."""
    out = tmp_path / "r"
    r = invoke("run", "--particles", data["mrcs"], "-d", out, *small_args(**{"train.gt_poses": True}))
    assert r.exit_code == 2 and "gt_poses" in r.output
    assert not out.exists()
    plug = tmp_path / "plug"
    plug.mkdir()
    (plug / "failing.py").write_text(
        "import cryoforge\n"
        "from cryoforge.errors import TrainingDiverged\n"
        "class Failing(cryoforge.Loss):\n"
        "    '''Fails at its first call.'''\n"
        "    name = 'failing'\n"
        "    views = ('identity',)\n"
        "    class Options(cryoforge.Options):\n"
        "        pass\n"
        "    def reduce(self, errors):\n"
        "        raise TrainingDiverged('failing on purpose')\n"
        "@cryoforge.hookimpl\n"
        "def cryoforge_register_losses():\n"
        "    return [Failing]\n"
    )
    args = ["--particles", data["star"], "-d", out, "--plugins-dir", plug, "--loss", "failing"]
    r = invoke("run", *args, *small_args())
    assert r.exit_code == 2 and "failing on purpose" in r.output
    assert (out / MARKER).is_file() and not (out / "checkpoint.pt").exists()
    r = invoke("run", "--particles", data["star"], "-d", out, *small_args())
    assert r.exit_code == 0, r.output
    assert load_checkpoint(out / "checkpoint.pt")["state"]["step"] == 3
    assert "failing" not in (out / "config.json").read_text()
    assert (out / "run.log").read_text().count("training ") == 1  # the stub's log went with it


def test_overwrite_starts_logs_afresh_and_removes_stale_outputs(run_copy, tiny):
    (run_copy / "tensorboard").mkdir()
    (run_copy / "tensorboard" / "events.out.old").write_text("old")
    (run_copy / "fsc_halves.png").write_text("stale")
    (run_copy / "my_notes.txt").write_text("mine")
    history_lines = len((run_copy / "history.jsonl").read_text().splitlines())
    r = invoke("run", "--particles", tiny["star"], "-d", run_copy, "--overwrite", *small_args())
    assert r.exit_code == 0, r.output
    log = (run_copy / "run.log").read_text()
    assert log.count("training ") == 1 and "resumed" not in log
    assert len((run_copy / "history.jsonl").read_text().splitlines()) == history_lines
    assert not (run_copy / "tensorboard").exists() and not (run_copy / "fsc_halves.png").exists()
    assert (run_copy / "my_notes.txt").read_text() == "mine"  # not the run's: kept


def test_a_second_start_into_a_locked_folder_refuses(run_copy, tiny, tmp_path):
    before = checksums(run_copy)
    with RunLock(run_copy):
        for args in (["--resume", run_copy], ["--particles", tiny["star"], "-d", run_copy, "--overwrite"]):
            r = invoke("run", *args, *small_args())
            assert_refused(r, str(run_copy), "another cryoforge process", str(os.getpid()))
        new = tmp_path / "new"
        new.mkdir()
        with RunLock(new):
            r = invoke("run", "--particles", tiny["star"], "-d", new, *small_args())
            assert_refused(r, "new", "another cryoforge process")
    assert checksums(run_copy) == before
    assert not (run_copy / LOCK).exists()
    r = invoke("run", "--resume", run_copy)
    assert r.exit_code == 0, r.output


ABINIT = {
    "schedule.name": "abinit",
    "schedule.fit_steps": 2,
    "schedule.amortize_steps": 2,
    "schedule.search.iterations": 2,
    "train.max_steps": None,
}


@pytest.mark.parametrize("budget", [{}, {"train.max_steps": None, "train.epochs": 1}, ABINIT])
def test_resuming_a_finished_run_trains_no_step(tiny, tmp_path, budget):
    d = tmp_path / "r"
    r = invoke("run", "--particles", tiny["star"], "-d", d, *small_args(**budget))
    assert r.exit_code == 0, r.output
    a = load_checkpoint(d / "checkpoint.pt")
    r = invoke("run", "--resume", d)
    assert r.exit_code == 0, r.output
    b = load_checkpoint(d / "checkpoint.pt")
    assert a["state"]["step"] == b["state"]["step"] > 0
    assert budget is ABINIT or b["state"]["step"] == 3
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert "had finished" in r.output  # said, not silently done


def test_outputs_honour_the_umask(tmp_path, tiny):
    """Every file a command writes gets 0666 & ~umask (0644 under 022, 0640 under 027)."""
    for mask, want in ((0o022, 0o644), (0o027, 0o640)):
        old = os.umask(mask)
        try:
            out = tmp_path / f"u{mask:o}"
            assert invoke("simulate", "--demo", "-n", "3", "--out", out / "sim").exit_code == 0
            r = invoke("run", "--particles", tiny["star"], "-d", out / "run", *small_args())
            assert r.exit_code == 0, r.output
            r = invoke("reconstruct", out / "sim" / "particles.star", "--out", out / "rec.mrc")
            assert r.exit_code == 0, r.output
        finally:
            os.umask(old)
        files = [p for p in out.rglob("*") if p.is_file()]
        assert len(files) >= 12
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
        assert set(modes.values()) == {want}, modes


def test_stale_temp_files_are_recognised_and_nothing_else(tmp_path):
    d = tmp_path / "r"
    (d / "half1").mkdir(parents=True)
    stale = [
        d / ".checkpoint.pt.cftmp-ab12cd_3.pt",
        d / ".map.mrc.cftmp-x1y2z3w4.mrc",
        d / "half1" / ".checkpoint.pt.k2j3h4g5.pt",  # an earlier version's name for a run file
    ]
    keep = [d / ".notes.txt", d / ".mydata.abcdefgh.txt", d / "checkpoint.pt", d / "half1" / "particles.txt"]
    for p in stale + keep:
        p.write_text("x")
    assert sorted(remove_stale_temp_files(d)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


def test_a_folder_holding_only_this_runs_inputs_is_accepted(tiny, tmp_path):
    """A reference map put into the run folder first is an input (never written over); one more
    file that is not an input makes the folder someone else's."""
    d = tmp_path / "r"
    d.mkdir()
    shutil.copy(tiny["map"], d / "truth.mrc")
    (d / "notes.txt").write_text("mine")
    before = checksums(d)
    args = ["run", "--particles", tiny["star"], "-d", d, *small_args(ground_truth_map=str(d / "truth.mrc"))]
    assert_refused(invoke(*args), "not a cryoforge run")
    assert checksums(d) == before
    (d / "notes.txt").unlink()
    truth = checksums(d)
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert run_dir_kind(d) == "run" and checksums(d)[d / "truth.mrc"] == truth[d / "truth.mrc"]


def test_demo_accepts_an_unmarked_folder_holding_only_its_data(tmp_path, monkeypatch):
    """``demo_run/data`` simulated by an earlier version (no marker): claimed, data kept."""
    import cryoforge.simulation.demo as demo

    data = tmp_path / "demo_run" / "data"
    data.mkdir(parents=True)
    for n in ("particles.star", "particles.mrcs", "map.mrc", "simulation.json"):
        (data / n).write_text(n)
    before = checksums(data)
    monkeypatch.setattr(demo, "simulate", lambda *a: pytest.fail("the data were there"))
    demo.claim_demo_run(tmp_path / "demo_run", data)
    assert run_dir_kind(tmp_path / "demo_run") == "run" and checksums(data) == before
    (data / "extra.txt").write_text("x")
    (tmp_path / "demo_run" / MARKER).unlink()
    with pytest.raises(InputFileError, match="not a cryoforge run"):
        demo.claim_demo_run(tmp_path / "demo_run", data)
