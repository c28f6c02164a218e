"""Faults: a kill during a checkpoint write, concurrent starts, a resume with changed options."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cryoforge.cli import cli
from cryoforge.engine.checkpoint import load_checkpoint
from cryoforge.io.atomic import TEMP_TAG
from cryoforge.io.outputs import LOCK, MARKER
from cryoforge.testing import TINY_RUN

SMALL = TINY_RUN
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

KILL_DURING_SAVE = '''
"""Kills its own process in the middle of checkpoint write number $CRYOFORGE_TEST_KILL_SAVE."""
import os
import signal

import torch

_save = torch.save
_calls = [0]


def _save_then_die(obj, f, *args, **kwargs):
    _calls[0] += 1
    if _calls[0] == int(os.environ.get("CRYOFORGE_TEST_KILL_SAVE", "0")):
        with open(f, "wb") as fh:  # the temporary file, half written
            fh.write(b"PK\\x03\\x04 half a checkpoint")
            fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return _save(obj, f, *args, **kwargs)


torch.save = _save_then_die
'''


def _cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "cryoforge.cli", *map(str, args)]


def _run_args(star: Path, out: Path, **over) -> list[str]:
    args: list[object] = ["run", "--particles", star, "-d", out]
    for k, v in {**SMALL, **over}.items():
        args += ["-o", k, json.dumps(v)]
    return _cli(*args)


def _inproc(cmd: list[str]):
    """Run a ``_cli(...)`` command line in this process (faster than a subprocess)."""
    return CliRunner().invoke(cli, cmd[3:])


def _run_killed_in_save(star: Path, out: Path, save_number: int, **over) -> None:
    """Run into ``out`` in a subprocess that SIGKILLs itself inside checkpoint write ``save_number``."""
    plug = out.parent / f"plug_{out.name}"
    plug.mkdir()
    (plug / "kill_during_save.py").write_text(KILL_DURING_SAVE)
    proc = subprocess.run(
        [*_run_args(star, out, **over), "--plugins-dir", str(plug)],
        env={**ENV, "CRYOFORGE_TEST_KILL_SAVE": str(save_number)},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def _sha(*paths: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if TEMP_TAG in p.name]


@pytest.fixture
def one_thread():
    """Torch on one thread in this process, as in the subprocesses (``ENV``): float sums, and so
    the weights after a few steps, depend on the thread count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_kill_during_checkpoint_write_then_resume(tiny, tmp_path, one_thread):
    """SIGKILL inside the 3rd checkpoint write: the 2nd checkpoint is intact, the half-written
    temporary file is removed at the next start, and the resumed run equals an uninterrupted one."""
    over = {"train.max_steps": 6, "train.checkpoint_every_steps": 1}
    ref = _inproc(_run_args(tiny["star"], tmp_path / "ref", **over))
    assert ref.exit_code == 0, ref.output
    killed = tmp_path / "killed"
    _run_killed_in_save(tiny["star"], killed, 3, **over)
    left = _temp_files(killed)
    assert len(left) == 1 and left[0].name.startswith(".checkpoint.pt.")  # the write it was in
    assert load_checkpoint(killed / "checkpoint.pt")["state"]["step"] == 2  # the last good one
    assert (killed / LOCK).exists()  # left by the kill; flock died with the process
    res = _inproc(_cli("run", "--resume", killed))
    assert res.exit_code == 0, res.output
    assert _temp_files(killed) == [] and not (killed / LOCK).exists()
    a, b = load_checkpoint(tmp_path / "ref" / "checkpoint.pt"), load_checkpoint(killed / "checkpoint.pt")
    assert b["state"]["step"] == 6
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), atol=1e-5), k


GATED_LOSS = """
import os
import time

import torch

import cryoforge


class Gated(cryoforge.Loss):
    \"\"\"L2 whose first call waits until the file $CRYOFORGE_TEST_GATE exists.\"\"\"

    name = "gated"
    views = ("identity",)

    class Options(cryoforge.Options):
        pass

    calls = 0

    def reduce(self, errors):
        Gated.calls += 1
        t0 = time.time()
        while Gated.calls == 1 and not os.path.exists(os.environ["CRYOFORGE_TEST_GATE"]):
            if time.time() - t0 > 300:
                raise RuntimeError("gate never opened")
            time.sleep(0.05)
        return errors[0].mean(), torch.zeros(errors.shape[1], dtype=torch.long, device=errors.device)


@cryoforge.hookimpl
def cryoforge_register_losses():
    return [Gated]
"""


def test_concurrent_starts_into_one_folder(tiny, tmp_path):
    """While a run trains (held at its first step, before any checkpoint), a second start, an
    --overwrite and a --resume into its folder all refuse naming its pid; the first finishes."""
    plug = tmp_path / "plug"
    plug.mkdir()
    (plug / "gated.py").write_text(GATED_LOSS)
    gate = tmp_path / "gate"
    env = {**ENV, "CRYOFORGE_TEST_GATE": str(gate)}
    d = tmp_path / "r"
    args = [
        *_run_args(tiny["star"], d, **{"train.max_steps": 3}),
        "--plugins-dir",
        str(plug),
        "--loss",
        "gated",
    ]
    with open(tmp_path / "first.err", "w") as err:
        first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        t0 = time.time()
        while not (d / "run.log").is_file() and time.time() - t0 < 120:
            time.sleep(0.05)
        assert (d / LOCK).is_file() and str(first.pid) in (d / LOCK).read_text()
        before = _sha(d / "config.json", d / MARKER, d / "plugins.json")
        for extra in ([], ["--overwrite"], ["RESUME"]):
            resume = _cli("run", "--resume", d, "--plugins-dir", plug)
            cmd = resume if extra == ["RESUME"] else [*args, *extra]
            second = _inproc(cmd)  # another process than the first's
            assert second.exit_code == 2, (extra, second.output)
            lines = second.output.strip().splitlines()
            assert len(lines) == 1 and "another cryoforge process" in lines[0] and str(first.pid) in lines[0]
        assert _sha(d / "config.json", d / MARKER, d / "plugins.json") == before
        assert first.poll() is None
        gate.touch()
        assert first.wait(timeout=300) == 0, (tmp_path / "first.err").read_text()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert load_checkpoint(d / "checkpoint.pt")["state"]["step"] == 3
    assert not (d / LOCK).exists()


@pytest.fixture(scope="module")
def killed_run(tiny, tmp_path_factory) -> Path:
    """A run of 6 steps killed in its 4th checkpoint write: it resumes from step 3."""
    d = tmp_path_factory.mktemp("killed") / "r"
    _run_killed_in_save(tiny["star"], d, 4, **{"train.max_steps": 6, "train.checkpoint_every_steps": 1})
    assert load_checkpoint(d / "checkpoint.pt")["state"]["step"] == 3
    return d


@pytest.mark.parametrize(
    "change, field",
    [
        (["-o", "volume.hidden_dim", "64"], "volume.hidden_dim"),
        (["-o", "encoder.channels", "[8, 32]"], "encoder.channels"),
        (["-o", "train.batch_size", "4"], "train.batch_size"),
        (["--loss", "l2"], "loss.name"),
        (["--particles", "OTHER"], "source.path"),
    ],
)
def test_resume_with_changed_options_is_refused_and_the_run_still_resumes(
    killed_run, tiny, tmp_path, change, field
):
    """Refused with one line naming the setting; config.json, checkpoint and marker unchanged;
    then a plain --resume continues the run to its budget."""
    d = tmp_path / "r"
    shutil.copytree(killed_run, d)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(tiny["star"], other / "particles.star")
    shutil.copy(tiny["mrcs"], other / "particles.mrcs")
    change = [str(other / "particles.star") if c == "OTHER" else c for c in change]
    files = [d / "config.json", d / "checkpoint.pt", d / MARKER, d / "plugins.json"]
    before = _sha(*files)
    res = CliRunner().invoke(cli, ["run", "--resume", str(d), *change])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "--resume cannot change" in lines[0] and field in lines[0], lines
    assert "checkpoint.pt" in lines[0]
    assert _sha(*files) == before
    ok = CliRunner().invoke(cli, ["run", "--resume", str(d)])
    assert ok.exit_code == 0, ok.output
    assert load_checkpoint(d / "checkpoint.pt")["state"]["step"] == 6


def test_resume_refuses_data_that_changed_under_the_run(tmp_path):
    """Same file name, fewer particles: the run's marker remembers 24 particles."""
    from cryoforge.testing import write_tiny_dataset

    data = write_tiny_dataset(tmp_path / "sim")
    d = tmp_path / "r"
    r = _inproc(_run_args(data["star"], d, **{"train.max_steps": 2}))
    assert r.exit_code == 0, r.output
    write_tiny_dataset(tmp_path / "sim", n=16)  # the same files, rewritten
    before = _sha(d / "config.json", d / "checkpoint.pt")
    res = CliRunner().invoke(cli, ["run", "--resume", str(d)])
    assert res.exit_code == 2, res.output
    assert "n_particles 24" in res.output and "16" in res.output and len(res.output.strip().splitlines()) == 1
    assert _sha(d / "config.json", d / "checkpoint.pt") == before


def test_killed_after_its_last_step_resumes_without_training_one_more(tiny, tmp_path):
    """Killed in the stage-end checkpoint write, after the last step's checkpoint: the resumed run
    finds the budget spent and trains no step; the weights are the killed run's."""
    plug = tmp_path / "plug"
    plug.mkdir()
    (plug / "kill_during_save.py").write_text(KILL_DURING_SAVE)
    d = tmp_path / "r"
    over = {"train.max_steps": 3, "train.checkpoint_every_steps": 1}
    proc = subprocess.run(
        [*_run_args(tiny["star"], d, **over), "--plugins-dir", str(plug)],
        env={**ENV, "CRYOFORGE_TEST_KILL_SAVE": "4"},  # saves 1-3 at the steps, 4 at the stage end
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    a = load_checkpoint(d / "checkpoint.pt")
    assert a["state"]["step"] == 3 and a["state"]["stage"] == 0
    res = _inproc(_cli("run", "--resume", d))
    assert res.exit_code == 0, res.output
    assert "had finished" in res.output
    b = load_checkpoint(d / "checkpoint.pt")
    assert b["state"]["step"] == 3
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


def test_half_set_run_resumes_and_refuses_a_changed_model(tiny, tmp_path):
    """Each half's checkpoint holds its own seed: a plain resume passes, a model change does not."""
    d = tmp_path / "r"
    r = _inproc(_run_args(tiny["star"], d, **{"train.max_steps": 2, "train.half_sets": True}))
    assert r.exit_code == 0, r.output
    before = _sha(d / "config.json", d / "half1" / "checkpoint.pt", d / "half2" / "checkpoint.pt")
    bad = _inproc(_cli("run", "--resume", d, "-o", "volume.hidden_dim", "16"))
    assert bad.exit_code == 2 and "volume.hidden_dim" in bad.output, bad.output
    assert len(bad.output.strip().splitlines()) == 1
    assert _sha(d / "config.json", d / "half1" / "checkpoint.pt", d / "half2" / "checkpoint.pt") == before
    ok = _inproc(_cli("run", "--resume", d))
    assert ok.exit_code == 0, ok.output
    assert load_checkpoint(d / "half2" / "checkpoint.pt")["state"]["step"] == 2


def test_resume_onto_a_missing_device_is_refused_before_config_json(killed_run, tmp_path):
    d = tmp_path / "r"
    shutil.copytree(killed_run, d)
    files = [d / "config.json", d / "checkpoint.pt", d / MARKER]
    before = _sha(*files)
    res = _inproc(_cli("run", "--resume", d, "-o", "train.device", "cuda:99"))
    assert res.exit_code == 2 and "train.device" in res.output and "cuda:99" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert _sha(*files) == before
    ok = _inproc(_cli("run", "--resume", d, "-o", "train.device", "cpu"))
    assert ok.exit_code == 0, ok.output
    assert load_checkpoint(d / "checkpoint.pt")["state"]["step"] == 6


SIGNAL_AT_STEP = '''
"""Sends $CRYOFORGE_TEST_SIGNAL to its own process during backward pass number $CRYOFORGE_TEST_SIGNAL_AT."""
import os

import torch

_backward = torch.Tensor.backward
_calls = [0]


def _backward_then_signal(self, *args, **kwargs):
    _calls[0] += 1
    if _calls[0] == int(os.environ.get("CRYOFORGE_TEST_SIGNAL_AT", "0")):
        os.kill(os.getpid(), int(os.environ["CRYOFORGE_TEST_SIGNAL"]))
    return _backward(self, *args, **kwargs)


torch.Tensor.backward = _backward_then_signal
'''


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_exits_128_plus_signum_and_resumes_exactly(
    tiny, tmp_path, one_thread, signum
):
    """SIGTERM (a scheduler's time limit) or SIGINT (Ctrl-C) during step 4: the run finishes that
    step, checkpoints it (newer than the periodic one of step 2), says so in one line and exits
    with 128 + signum; ``--resume`` ends equal to an uninterrupted run."""
    over = {"train.max_steps": 6, "train.checkpoint_every_steps": 2, "train.checkpoint_every_s": 1e6}
    ref = _inproc(_run_args(tiny["star"], tmp_path / "ref", **over))
    assert ref.exit_code == 0, ref.output
    plug = tmp_path / "plug"
    plug.mkdir()
    (plug / "signal_at_step.py").write_text(SIGNAL_AT_STEP)
    d = tmp_path / "r"
    t0 = time.monotonic()
    proc = subprocess.run(
        [*_run_args(tiny["star"], d, **over), "--plugins-dir", str(plug)],
        env={**ENV, "CRYOFORGE_TEST_SIGNAL_AT": "4", "CRYOFORGE_TEST_SIGNAL": str(int(signum))},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 128 + signum, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("Interrupted")]
    assert len(lines) == 1 and signal.Signals(signum).name in lines[0] and "--resume" in lines[0], proc.stderr
    assert time.monotonic() - t0 < 60
    assert load_checkpoint(d / "checkpoint.pt")["state"]["step"] == 4  # not the periodic one of step 2
    assert _temp_files(d) == [] and not (d / LOCK).exists()
    res = _inproc(_cli("run", "--resume", d))
    assert res.exit_code == 0, res.output
    a, b = load_checkpoint(tmp_path / "ref" / "checkpoint.pt"), load_checkpoint(d / "checkpoint.pt")
    assert b["state"]["step"] == 6
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
