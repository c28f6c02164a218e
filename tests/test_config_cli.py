"""Typed config, overrides, and the CLI's clean one-line errors (exit code 2)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cryoforge.cli import cli
from cryoforge.config import RunConfig, apply_override, load_config_file, resolve
from cryoforge.errors import ConfigError


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_defaults_are_cryoai():
    c = RunConfig()
    assert (c.encoder.name, c.volume.name, c.imaging.name, c.loss.name) == (
        "vgg",
        "fouriernet",
        "cryoai",
        "symmetrized",
    )


def test_resolve_fills_defaults_and_roundtrips(registry):
    c = resolve(apply_override(RunConfig(), "volume.hidden_dim", 64), registry)
    assert c.volume.options["hidden_dim"] == 64 and c.volume.options["omega_0_modulant"] == 40.0
    again = RunConfig.model_validate_json(c.model_dump_json())
    assert resolve(again, registry) == c


def test_option_error_names_field(registry):
    with pytest.raises(
        ConfigError, match=r"^volume\.options\.omega_0_modulant: Input should be a valid number"
    ):
        resolve(apply_override(RunConfig(), "volume.omega_0_modulant", "fast"), registry)
    with pytest.raises(ConfigError, match=r"volume\.options\.bogus: unknown option"):
        resolve(apply_override(RunConfig(), "volume.bogus", 1), registry)


def test_toml_and_json_config_files(tmp_path, registry):
    (tmp_path / "c.toml").write_text(
        '[volume]\nname = "fouriernet"\noptions = { hidden_dim = 32 }\n[train]\nbatch_size = 8\n'
    )
    c = load_config_file(tmp_path / "c.toml")
    assert c.volume.options == {"hidden_dim": 32} and c.train.batch_size == 8
    (tmp_path / "c.json").write_text(json.dumps({"train": {"epochs": "many"}}))
    with pytest.raises(ConfigError, match=r"c\.json: train\.epochs"):
        load_config_file(tmp_path / "c.json")


def test_example_config_is_the_default(registry):
    from pathlib import Path

    ex = load_config_file(Path(__file__).resolve().parents[1] / "examples" / "cryoai.toml")
    a, b = resolve(ex, registry), resolve(RunConfig(), registry)
    for role in ("encoder", "volume", "imaging", "loss"):
        assert getattr(a, role) == getattr(b, role), role
    assert a.schedule.name == "cryoai"  # the paper's recipe, whatever the default schedule


def test_cli_version_and_plugins():
    r = invoke("--version")
    assert r.exit_code == 0 and "cryoforge, version" in r.output
    r = invoke("plugins", "list", "--json")
    rows = json.loads(r.output)
    assert {"kind": "volume", "name": "fouriernet"}.items() <= next(
        x for x in rows if x["name"] == "fouriernet"
    ).items()
    r = invoke("plugins", "list", "--kind", "loss")
    assert "symmetrized" in r.output and "fouriernet" not in r.output
    r = invoke("plugins", "show", "volume", "fouriernet")
    assert r.exit_code == 0 and "omega_0_modulant" in r.output and "FourierNet" in r.output


def test_cli_dry_run_resolves_overrides(tiny, tmp_path):
    r = invoke(
        "run",
        "--particles",
        str(tiny["star"]),
        "-d",
        str(tmp_path / "r"),
        "-o",
        "encoder.channels",
        "[8, 8]",
        "--volume",
        "fouriernet",
        "-o",
        "volume.hidden_dim",
        "48",
        "-o",
        "train.batch_size",
        "4",
        "--dry-run",
    )
    assert r.exit_code == 0, r.output
    c = json.loads(r.output)
    assert c["volume"]["options"]["hidden_dim"] == 48 and c["train"]["batch_size"] == 4
    assert c["source"]["name"] == "star" and c["loss"]["name"] == "symmetrized"
    r = invoke("config", "show", "--loss", "l2")
    assert json.loads(r.output)["loss"]["name"] == "l2"


def test_cli_example_plugin_dry_run(example_plugin_site, tmp_path):
    # the installed command, in a fresh process that sees the installed example plugin
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(example_plugin_site)}
    env.pop("CRYOFORGE_DISABLE_PLUGIN_AUTOLOAD", None)
    command = Path(sys.executable).with_name("cryoforge")
    r = subprocess.run(
        [str(command), "run", "--volume", "gaussians", "--dry-run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["volume"]["options"]["n_gaussians"] == 64


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["run", "--volume", "nope", "--dry-run"], r"^Error: unknown volume 'nope'; available: .*fouriernet"),
        (
            ["run", "-o", "volume.nonsense", "1", "--dry-run"],
            r"^Error: volume\.options\.nonsense: unknown option",
        ),
        (
            ["run", "-o", "volume.hidden_dim", "big", "--dry-run"],
            r"^Error: volume\.options\.hidden_dim: Input should be a valid integer",
        ),
        (
            ["run", "-o", "train.batch_size", "0", "--dry-run"],
            r"^Error: train\.batch_size: Input should be greater",
        ),
        (
            ["run", "--particles", "missing.star"],
            r"^Error: missing\.star \[--particles\]: particle file not found",
        ),
        (["run", "--config", "missing.toml"], r"^Error: missing\.toml: config file not found"),
        (["evaluate", "missing.mrc"], r"^Error: missing\.mrc: map file not found"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args, pattern):
    import re

    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.strip().splitlines() if x]
    assert len(lines) == 1 and re.search(pattern, lines[0]), r.output
    assert "Traceback" not in r.output


def test_cli_bad_stack_reference_exit_2(tmp_path, tiny):
    star = tmp_path / "p.star"
    star.write_text(tiny["star"].read_text().replace("@particles.mrcs", "@gone.mrcs"))
    r = CliRunner().invoke(cli, ["run", "--particles", str(star)])
    assert (
        r.exit_code == 2 and "stack file 'gone.mrcs' not found" in r.output and "[rlnImageName]" in r.output
    )


def test_cli_count_mismatch_and_nan(tmp_path, tiny):
    import numpy as np

    from cryoforge.io.mrc import open_stack, write_mrc

    stack = np.asarray(open_stack(tiny["mrcs"]))
    write_mrc(tmp_path / "particles.mrcs", stack[:5], 4.0, stack=True)
    (tmp_path / "p.star").write_text(tiny["star"].read_text())
    r = CliRunner().invoke(cli, ["run", "--particles", str(tmp_path / "p.star")])
    assert r.exit_code == 2 and "refers to image" in r.output and "holds 5" in r.output
    bad = stack.copy()
    bad[3, 2, 2] = np.nan
    with pytest.warns(RuntimeWarning, match="NaN"):
        write_mrc(tmp_path / "particles.mrcs", bad, 4.0, stack=True)
    r = CliRunner().invoke(cli, ["run", "--particles", str(tmp_path / "p.star")])
    assert r.exit_code == 2 and "image 4 contains NaN" in r.output and "[data]" in r.output


def test_existing_outputs_are_never_overwritten(tmp_path, tiny):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    r = CliRunner().invoke(cli, ["run", "--particles", str(tiny["star"]), "-d", str(run_dir)])
    assert r.exit_code == 2 and "already holds a run" in r.output and "--resume" in r.output
    assert (run_dir / "config.json").read_text() == "{}"
    before = tiny["star"].read_bytes()
    r = CliRunner().invoke(cli, ["simulate", "--demo", "--out", str(tiny["star"].parent), "-n", "3"])
    assert r.exit_code == 2 and "already there" in r.output
    assert tiny["star"].read_bytes() == before
