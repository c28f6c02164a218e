"""Issue 22, class 1: every option (components, training, each stage of the schedule) is checked
before a run removes or writes anything; ``--dry-run`` gives the verdict of a real run; a resume
may correct the options of a stage that has not run; a resume without a checkpoint is refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cryoforge.cli import cli
from cryoforge.engine.checkpoint import load_checkpoint
from cryoforge.testing import TINY_MODEL, assert_one_line_error

SMALL = TINY_MODEL
SEARCH = {"iterations": 1, "refine_steps_deg": [], "starts": 1, "start_iterations": 1, "start_subset": 10}
ABINIT = {**SMALL, "schedule.search": SEARCH, "schedule.fit_steps": 1, "train.max_steps": 2}
"""search (1 step) and fit (1 step): the budget ends before the amortize stage starts."""


def args(**over) -> list[str]:
    out: list[str] = []
    for k, v in {**ABINIT, **over}.items():
        out += ["-o", k, json.dumps(v)]
    return out


def invoke(*a: object):
    return CliRunner().invoke(cli, [str(x) for x in a])


def sha(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in (".cryoforge-lock",)
    }


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory) -> Path:
    """A run of search and fit (its budget ends before amortize)."""
    d = tmp_path_factory.mktemp("finished") / "r"
    r = invoke("run", "--particles", tiny["star"], "-d", d, *args())
    assert r.exit_code == 0, r.output
    assert load_checkpoint(d / "checkpoint.pt")["state"]["stage"] == 2
    return d


BAD = [
    ({"schedule.search": {"iterations": -3}}, "stage 'search': options.iterations"),
    ({"schedule.amortize": {"bogus": 1}}, "stage 'amortize': options.bogus: unknown option"),
    ({"schedule.amortize": {"lr": "inf"}}, "stage 'amortize': options.lr"),
    ({"train.batch_size": 9999999999999999999999}, "train.batch_size"),
    ({"train.lr_encoder": "inf"}, "train.lr_encoder"),
    ({"train.lr_volume": "nan"}, "train.lr_volume"),
    ({"train.seed": -1}, "train.seed"),
    ({"train.max_time_s": "Infinity"}, "train.max_time_s"),
    ({"encoder.channels": [-8, 8]}, "encoder.options.channels"),
    ({"encoder.channels": []}, "encoder.options.channels"),
    ({"encoder.head_hidden": [2**60]}, "encoder.options.head_hidden"),
    ({"volume.hidden_dim": 1e400}, "volume.options.hidden_dim"),
    ({"volume.omega_0_modulant": "nan"}, "volume.options.omega_0_modulant"),
]


@pytest.mark.parametrize("over, needle", BAD)
def test_overwrite_with_a_bad_option_removes_nothing_and_dry_run_agrees(finished, tmp_path, over, needle):
    """The real run and its --dry-run both refuse, with the same line; the old run is intact."""
    import shutil

    d = tmp_path / "r"
    shutil.copytree(finished, d)
    before = sha(d)
    real = assert_one_line_error(
        invoke("run", "--overwrite", "--config", d / "config.json", "-d", d, *args(**over)), needle
    )
    dry = assert_one_line_error(
        invoke("run", "--overwrite", "--config", d / "config.json", "-d", d, *args(**over), "--dry-run"),
        needle,
    )
    assert real == dry
    assert sha(d) == before


def test_a_bad_option_fails_before_a_new_folder_exists(tiny, tmp_path):
    d = tmp_path / "new"
    assert_one_line_error(
        invoke("run", "--particles", tiny["star"], "-d", d, *args(**{"schedule.amortize": {"x": 1}}))
    )
    assert not d.exists()


def test_dry_run_refuses_what_the_run_refuses(finished, tiny):
    """A run folder without --overwrite: the dry run refuses it as the run would."""
    real = assert_one_line_error(
        invoke("run", "--particles", tiny["star"], "-d", finished, *args()), "already holds a run"
    )
    dry = assert_one_line_error(
        invoke("run", "--particles", tiny["star"], "-d", finished, *args(), "--dry-run")
    )
    assert real == dry
    ok = invoke("run", "--particles", tiny["star"], "-d", finished, *args(), "--overwrite", "--dry-run")
    assert ok.exit_code == 0, ok.output
    assert [s["name"] for s in json.loads(ok.output)["schedule"]["stages"]] == [
        "search",
        "fit",
        "amortize",
        "infer",
        "refine",
    ]


def test_resume_may_correct_a_stage_that_has_not_run_but_not_one_that_has(finished, tmp_path):
    import shutil

    d = tmp_path / "r"
    shutil.copytree(finished, d)
    before = sha(d)
    r = invoke("run", "--resume", d, "-o", "schedule.search", json.dumps({**SEARCH, "iterations": 2}))
    assert_one_line_error(
        r, "--resume cannot change", "stage 'search' options.iterations", "1 in the run, 2 now"
    )
    assert sha(d) == before
    ok = invoke(
        "run",
        "--resume",
        d,
        "-o",
        "train.max_steps",
        "3",
        "-o",
        "schedule.amortize",
        '{"lr": 0.002, "batch_size": 4}',
    )
    assert ok.exit_code == 0, ok.output
    ck = load_checkpoint(d / "checkpoint.pt")
    assert ck["state"]["step"] == 3 and ck["state"]["stages"]["amortize"]["step"] == 1
    assert json.loads((d / "config.json").read_text())["schedule"]["options"]["amortize"]["lr"] == 0.002
    # now amortize has run: its options are the run's
    r = invoke("run", "--resume", d, "-o", "train.max_steps", "4", "-o", "schedule.amortize", '{"lr": 0.003}')
    assert_one_line_error(r, "stage 'amortize' options.lr")


def test_resume_of_a_run_saved_with_an_option_now_refused(finished, tmp_path):
    """A run whose config.json holds a stage option that is now refused (it stopped the run when
    its stage began): a resume that corrects it continues; a plain resume says which option."""
    import shutil

    d = tmp_path / "r"
    shutil.copytree(finished, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["schedule"]["options"]["amortize"] = {"bogus": 1}
    (d / "config.json").write_text(json.dumps(cfg))
    ck = load_checkpoint(d / "checkpoint.pt")
    ck_cfg = json.loads(ck["config"])
    ck_cfg["schedule"]["options"]["amortize"] = {"bogus": 1}
    ck["config"] = json.dumps(ck_cfg)
    import torch

    torch.save(ck, d / "checkpoint.pt")
    assert_one_line_error(invoke("run", "--resume", d), "stage 'amortize': options.bogus: unknown option")
    ok = invoke("run", "--resume", d, "-o", "schedule.amortize", "{}", "-o", "train.max_steps", "3")
    assert ok.exit_code == 0, ok.output


def test_resume_without_a_checkpoint_is_refused_and_keeps_the_outputs(finished, tmp_path):
    import shutil

    d = tmp_path / "r"
    shutil.copytree(finished, d)
    (d / "checkpoint.pt").unlink()
    before = sha(d)
    for extra in ([], ["--dry-run"]):
        assert_one_line_error(
            invoke("run", "--resume", d, *extra), "checkpoint.pt", "no checkpoint", "--overwrite"
        )
    assert sha(d) == before
    # starting over is asked for explicitly
    ok = invoke("run", "--config", d / "config.json", "-d", d, "--overwrite")
    assert ok.exit_code == 0, ok.output
    assert (d / "checkpoint.pt").is_file()


def test_a_runner_declares_its_options_and_every_stage_is_checked_up_front():
    from pydantic import Field

    from cryoforge.engine.stages import RUNNERS, STAGE_OPTIONS, check_stages, register_runner, stage_options
    from cryoforge.errors import ConfigError
    from cryoforge.options import Options
    from cryoforge.schedules.base import Stage

    class KOptions(Options):
        n: int = Field(1, ge=1)

    @register_runner("test-kind", options=KOptions)
    def runner(ctx, stage):  # pragma: no cover - never run
        raise AssertionError

    try:
        ok = Stage(name="a", kind="test-kind", options={"n": 3})
        check_stages([ok], "s")
        assert stage_options(ok).n == 3
        bad = [ok, Stage(name="b", kind="test-kind", options={"n": 0})]
        with pytest.raises(ConfigError, match=r"schedule 's': stage 'b': options.n: Input should be greater"):
            check_stages(bad, "s")
        for kind in ("gradient", "search", "amortize"):  # every built-in runner declares its options
            assert kind in STAGE_OPTIONS
            with pytest.raises(ConfigError, match="unknown option"):
                check_stages([Stage(name="x", kind=kind, options={"nope": 1})], "s")
    finally:
        RUNNERS.pop("test-kind", None)
        STAGE_OPTIONS.pop("test-kind", None)


def test_a_stage_naming_an_unknown_encoder_is_refused_up_front(registry):
    from cryoforge.engine.stages import check_stages
    from cryoforge.errors import ConfigError
    from cryoforge.schedules.base import Stage

    with pytest.raises(ConfigError, match="unknown encoder 'nope'"):
        check_stages([Stage(name="x", kind="gradient", encoder="nope")], "s", registry)
