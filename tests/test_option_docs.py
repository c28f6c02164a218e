"""Every built-in option is documented, and ``cryoforge plugins show`` prints it as a table."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cryoforge.cli import cli
from cryoforge.config import TrainConfig
from cryoforge.option_docs import option_rows, type_name
from cryoforge.plugins import load_registry

BUILTIN = [(k, n) for k, n, e in load_registry() if e.provider.startswith("cryoforge.")]


def test_there_are_built_ins_of_every_role():
    assert {k for k, _ in BUILTIN} == {"source", "encoder", "volume", "imaging", "loss", "schedule"}


@pytest.mark.parametrize(("kind", "name"), BUILTIN)
def test_every_built_in_option_has_a_description(kind, name):
    cls = load_registry().get(kind, name)
    rows = option_rows(cls.Options)
    missing = [r.name for r in rows if not r.description]
    assert not missing, f"{kind} {name!r}: options without a description: {missing}"


def test_every_train_setting_has_a_description():
    rows = option_rows(TrainConfig)
    assert {r.name for r in rows} == set(TrainConfig.model_fields)
    assert [r.name for r in rows if not r.description] == []


def test_nested_models_are_flattened_with_dotted_names():
    cls = load_registry().get("schedule", "staged")
    names = [r.name for r in option_rows(cls.Options)]
    assert "stages" in names and "stages[].kind" in names and "stages[].band" in names


def test_type_names_are_readable():
    from typing import Literal

    assert type_name(int | None) == "int | None"
    assert type_name(list[int]) == "list[int]"
    assert type_name(Literal["auto", "torch"]) == "'auto' | 'torch'"


def _show(*args: str):
    return CliRunner().invoke(cli, ["plugins", "show", *args], catch_exceptions=False)


def test_plugins_show_prints_name_type_default_description():
    r = _show("volume", "hashgrid")
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if "log2_table_size" in ln)
    assert "int, ≥ 4, ≤ 24" in line and " 13 " in line and "hash table" in line
    for header in ("option", "type", "default", "description"):
        assert header in r.output
    assert "Instant-NGP hash grid" in r.output  # the docstring first


def test_plugins_show_train_looks_up_train_settings():
    r = _show("train")
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if " export_every_s " in ln)
    assert "float, > 0" in line and "300.0" in line and "seconds between" in line


def test_plugins_show_json_schema_and_missing_name():
    r = _show("loss", "l2", "--json")
    assert r.exit_code == 0 and r.output.lstrip().startswith("{")
    r = CliRunner().invoke(cli, ["plugins", "show", "volume"])
    assert r.exit_code == 2 and "give the volume NAME" in r.output
