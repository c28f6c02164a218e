"""Schedules and stages: the cryoai schedule, contracts, multi-stage runs, resume mid-stage, dry run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from pydantic import ValidationError

import cryoforge
from cryoforge.cli import cli
from cryoforge.config import RunConfig, apply_override
from cryoforge.engine import RUNNERS, register_runner
from cryoforge.engine.checkpoint import load_checkpoint
from cryoforge.engine.loop import stage_budget, stage_fraction
from cryoforge.engine.run import run
from cryoforge.errors import ConfigError
from cryoforge.ops.filters import lowpass_disk
from cryoforge.testing import TINY_RUN, check_component

SMALL = TINY_RUN

PLUGIN = '''
import os, signal
import torch
import cryoforge
from cryoforge.testing import TINY_RUN


class TwoStage(cryoforge.Schedule):
    """Two gradient stages: a widening low band, then up to the full band."""

    name = "two-stage"

    class Options(cryoforge.Options):
        steps: int = 3
        kind: str = "gradient"
        fine_encoder: str | None = None

    def stages(self):
        n, enc = self.options.steps, self.options.fine_encoder
        return [
            cryoforge.Stage(name="coarse", kind=self.options.kind, band=(0.3, 0.6), max_steps=n),
            cryoforge.Stage(name="fine", kind="gradient", band=(0.6, 1.0), max_steps=n, encoder=enc),
        ]


class Tiny(cryoforge.Encoder):
    """Identity rotations and a shift learned from the image mean."""

    name = "tiny"

    class Options(cryoforge.Options):
        pass

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        self.lin = torch.nn.Linear(1, 2)

    def forward(self, images):
        eye = torch.eye(3, device=images.device).expand(images.shape[0], 3, 3)
        return cryoforge.Pose(eye, self.lin(images.mean((-2, -1))[:, None]))


class KillAt(cryoforge.Loss):
    """L2 that SIGKILLs its own process at reduce call number $CRYOFORGE_TEST_KILL_AT."""

    name = "kill-at"

    class Options(cryoforge.Options):
        pass

    calls = 0

    def reduce(self, errors):
        KillAt.calls += 1
        if KillAt.calls == int(os.environ.get("CRYOFORGE_TEST_KILL_AT", "0")):
            os.kill(os.getpid(), signal.SIGKILL)
        return errors[0].mean(), torch.zeros(errors.shape[1], dtype=torch.long, device=errors.device)


@cryoforge.hookimpl
def cryoforge_register_schedules():
    return [TwoStage]


@cryoforge.hookimpl
def cryoforge_register_losses():
    return [KillAt]


@cryoforge.hookimpl
def cryoforge_register_encoders():
    return [Tiny]
'''


@pytest.fixture
def plug(tmp_path: Path) -> Path:
    d = tmp_path / "plugs"
    d.mkdir()
    (d / "staged.py").write_text(PLUGIN)
    return d


def config_for(star: Path, out: Path, **over) -> RunConfig:
    c = RunConfig()
    for k, v in {"source.path": str(star), "output_dir": str(out), **SMALL, **over}.items():
        c = apply_override(c, k, v)
    return c


def test_cryoai_schedule_is_todays_single_gradient_stage(registry):
    assert RunConfig().schedule.name == "abinit"  # the benchmark's winner is the default
    sched = registry.build("schedule", "cryoai")
    (stage,) = sched.stages()
    assert stage == cryoforge.Stage(name="train", kind="gradient")
    assert stage.band == (1.0, 1.0) and stage.encoder is None
    assert stage.max_steps is None and stage.epochs is None and stage.options == {}


def test_stage_values_are_validated_and_frozen():
    for band in ((0.0, 1.0), (0.5, 1.2)):
        with pytest.raises(ValidationError):
            cryoforge.Stage(name="s", kind="gradient", band=band)
    with pytest.raises(ValidationError):
        cryoforge.Stage(name="s", kind="gradient", max_steps=0)
    with pytest.raises(ValidationError):
        cryoforge.Stage(name="s", kind="gradient", bogus=1)
    s = cryoforge.Stage(name="s", kind="gradient", band=(0.25, 0.75))
    with pytest.raises(ValidationError):
        s.name = "t"
    assert s.band_at(0) == 0.25 and s.band_at(0.5) == 0.5 and s.band_at(1) == 0.75 and s.band_at(2) == 0.75


def test_budget_and_band_fraction_follow_train_settings():
    tc = RunConfig().train.model_copy(update={"epochs": 2, "max_steps": None})
    assert stage_budget(cryoforge.Stage(name="a", kind="gradient"), tc, 5) == (2, 10)
    assert stage_budget(cryoforge.Stage(name="a", kind="gradient", max_steps=3), tc, 5) == (2, 3)
    assert stage_budget(cryoforge.Stage(name="a", kind="gradient", epochs=0, max_steps=7), tc, 5) == (0, 7)
    assert [stage_fraction(s, 3, 0.0, None) for s in range(3)] == [0.0, 0.5, 1.0]
    assert stage_fraction(0, None, 30.0, 60.0) == 0.5


def test_lowpass_disk_keeps_the_band_and_full_band_is_identity():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 16, 16, generator=g, requires_grad=True)
    assert lowpass_disk(images, 1.0) is images
    low = lowpass_disk(images, 0.5)
    assert low.shape == images.shape and not low.is_complex()
    assert torch.allclose(low.mean((-2, -1)), images.mean((-2, -1)), atol=1e-5)  # DC kept
    spec = torch.fft.rfft2(low)
    k = torch.stack(torch.meshgrid(torch.fft.fftfreq(16), torch.fft.rfftfreq(16), indexing="ij"), -1)
    assert spec[:, k.norm(dim=-1) > 0.25 + 1e-6].abs().max() < 1e-5
    assert torch.allclose(lowpass_disk(low, 0.5), low, atol=1e-5)  # a projection
    low.pow(2).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()


def test_contract_accepts_builtins_and_catches_bad_schedules():
    check_component("schedule", cryoforge.load_registry().get("schedule", "cryoai"), kinds=RUNNERS)

    def schedule(stages):
        class Bad(cryoforge.Schedule):
            """A broken schedule."""

            name = "bad"

            class Options(cryoforge.Options):
                pass

            def stages(self):
                return stages

        return Bad

    g = cryoforge.Stage(name="a", kind="gradient")
    with pytest.raises(AssertionError, match="non-empty list"):
        check_component("schedule", schedule([]), kinds=RUNNERS)
    with pytest.raises(AssertionError, match="not unique"):
        check_component("schedule", schedule([g, g]), kinds=RUNNERS)
    with pytest.raises(AssertionError, match="unknown stage kinds"):
        check_component("schedule", schedule([g.model_copy(update={"kind": "nope"})]), kinds=RUNNERS)


def test_two_stage_schedule_runs_every_stage_with_its_band(tiny, tmp_path, plug):
    over = {"schedule.name": "two-stage", "loss.name": "l2", "train.max_steps": 100}
    res = run(config_for(tiny["star"], tmp_path / "two", **over), plugins_dirs=[str(plug)])
    ck = load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    assert ck["state"]["stage"] == 2 and ck["state"]["step"] == 6
    assert {n: p["step"] for n, p in ck["state"]["stages"].items()} == {"coarse": 3, "fine": 3}
    assert res.metrics["steps"] == 6 and (tmp_path / "two" / "map.mrc").is_file()
    log = (tmp_path / "two" / "run.log").read_text()
    assert "stage 0 'coarse'" in log and "stage 1 'fine'" in log
    full = run(config_for(tiny["star"], tmp_path / "one", **{"loss.name": "l2", "train.max_steps": 6}))
    assert res.history[0]["loss"] < full.history[0]["loss"]  # the same first batch, low-passed


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cryoforge.cli", *args]


@pytest.mark.parametrize(
    "kill_at,encoder",
    [(5, None), (4, None), (5, "tiny")],
    ids=["mid-stage-2", "start-of-stage-2", "mid-stage-2-own-encoder"],
)
def test_resume_after_kill_in_stage_two(tiny, tmp_path, plug, kill_at, encoder):
    """SIGKILL in the 2nd step of stage 2 (or its 1st, before it wrote a checkpoint), then resume."""
    args = ["run", "--particles", str(tiny["star"]), "--plugins-dir", str(plug), "--schedule", "two-stage"]
    args += ["--loss", "kill-at", "-o", "train.checkpoint_every_steps", "1"]
    args += ["-o", "schedule.fine_encoder", encoder] if encoder else []
    for k, v in SMALL.items():
        if k != "schedule.name":  # --schedule two-stage above
            args += ["-o", k, json.dumps(v)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(_cli(*args, "-d", str(tmp_path / "ref")), env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    killed = tmp_path / "killed"
    kill_env = {**env, "CRYOFORGE_TEST_KILL_AT": str(kill_at)}  # the loss's call = the step
    proc = subprocess.run(_cli(*args, "-d", str(killed)), env=kill_env, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    at_kill = load_checkpoint(killed / "checkpoint.pt")["state"]
    assert at_kill["stage"] == 1 and at_kill["step"] == kill_at - 1
    assert at_kill["stages"].get("fine", {"step": 0})["step"] == kill_at - 4
    res = subprocess.run(
        _cli("run", "--resume", str(killed), "--plugins-dir", str(plug)),
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    a, b = (load_checkpoint(d / "checkpoint.pt") for d in (tmp_path / "ref", killed))
    assert b["state"]["stage"] == 2 and b["state"]["step"] == 6
    untimed = lambda st: {
        n: {k: v for k, v in p.items() if k != "elapsed_s"} for n, p in st["stages"].items()
    }
    assert (
        untimed(a["state"])
        == untimed(b["state"])
        == {
            "coarse": {"epoch": 0, "batch": 3, "step": 3},
            "fine": {"epoch": 0, "batch": 3, "step": 3},
        }
    )
    assert a["model"].keys() == b["model"].keys() and a["state"]["encoder"] == encoder
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), atol=1e-5), k
    if encoder:  # the configured encoder, trained in stage 1, is kept aside
        assert a["encoders"].keys() == b["encoders"].keys() == {"vgg"}
        for k, v in a["encoders"]["vgg"].items():
            assert torch.allclose(v.float(), b["encoders"]["vgg"][k].float(), atol=1e-5), k
    assert [h[:2] for h in a["history"]] == [h[:2] for h in b["history"]]
    log = (killed / "run.log").read_text()
    assert log.count("stage 0 'coarse'") == 1 and log.count("stage 1 'fine'") == 2  # coarse not rerun


def test_dry_run_prints_the_stages(plug):
    r = CliRunner().invoke(
        cli,
        [
            "run",
            "--plugins-dir",
            str(plug),
            "--schedule",
            "two-stage",
            "-o",
            "schedule.steps",
            "5",
            "--dry-run",
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    stages = json.loads(r.output)["schedule"]["stages"]
    assert [(s["name"], s["kind"], s["band"], s["max_steps"]) for s in stages] == [
        ("coarse", "gradient", [0.3, 0.6], 5),
        ("fine", "gradient", [0.6, 1.0], 5),
    ]
    r = CliRunner().invoke(cli, ["run", "--dry-run"], catch_exceptions=False)
    assert [s["name"] for s in json.loads(r.output)["schedule"]["stages"]] == [
        "search",
        "fit",
        "amortize",
        "infer",
        "refine",
    ]


def test_unknown_stage_kind_is_one_line_error(plug):
    r = CliRunner().invoke(
        cli,
        [
            "run",
            "--plugins-dir",
            str(plug),
            "--schedule",
            "two-stage",
            "-o",
            "schedule.kind",
            "nope",
            "--dry-run",
        ],
    )
    assert r.exit_code == 2
    assert r.output.strip() == (
        "Error: schedule 'two-stage': stage 'coarse' has kind 'nope', which no runner executes "
        "(known: amortize, gradient, infer, refine, search)"
    )


def test_plugins_list_shows_schedules():
    r = CliRunner().invoke(cli, ["plugins", "list", "--kind", "schedule", "--json"], catch_exceptions=False)
    rows = json.loads(r.output)
    assert {x["kind"] for x in rows} == {"schedule"}
    assert ("cryoai", "cryoforge.schedules") in [(x["name"], x["plugin"]) for x in rows]


def test_a_registered_runner_can_leave_poses_for_later_stages(tiny, tmp_path, plug):
    """One decorator adds a stage kind; the pose table it leaves is checkpointed and exported."""

    def copy_known_poses(ctx, stage):
        ctx.poses = ctx.source.poses.index(torch.as_tensor(ctx.index))

    register_runner("copy-poses")(copy_known_poses)
    try:
        with pytest.raises(ValueError, match="already run by"):
            register_runner("copy-poses")(lambda ctx, stage: None)
        over = {"schedule.name": "two-stage", "schedule.kind": "copy-poses", "train.gt_poses": True}
        res = run(config_for(tiny["star"], tmp_path / "r", **over), plugins_dirs=[str(plug)])
    finally:
        del RUNNERS["copy-poses"]
    ck = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    assert ck["state"]["step"] == 3 and ck["poses"]["rotation"].shape == (24, 3, 3)
    assert res.star_path is not None and res.metrics["rot_median_deg"] < 1e-3  # the known poses
    with pytest.raises(ConfigError, match="no runner executes"):
        run(config_for(tiny["star"], tmp_path / "r2", **over), plugins_dirs=[str(plug)])
