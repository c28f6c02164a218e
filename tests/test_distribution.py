"""The distribution name: ``cryoforge-em``; the import package and the command stay ``cryoforge``.

``cryoforge`` on PyPI is an unrelated project, so the metadata, the plugin template and the install
docs must all use :data:`cryoforge.distribution.DIST_NAME`. The installed-metadata tests fail on an
environment installed before the rename: reinstall with ``pip uninstall -y cryoforge`` then
``pip install -e .``.
"""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, entry_points, metadata, packages_distributions
from pathlib import Path

import pytest

import cryoforge
from cryoforge.distribution import DIST_NAME, UNKNOWN_VERSION, installed_version
from cryoforge.plugins import DEFAULT_PLUGINS, GROUP, get_plugin_manager, plugin_versions

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "plugins" / "cryoforge-example"
REINSTALL = "stale install: run `pip uninstall -y cryoforge` then `pip install -e .` in the repository"


def canonical(name: str) -> str:
    """PEP 503 normalized project name (``Cryoforge_EM`` → ``cryoforge-em``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    """The project name at the start of a PEP 508 requirement string."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    assert match, req
    return canonical(match.group(1))


def _pyproject(path: Path) -> dict:
    return tomllib.loads((path / "pyproject.toml").read_text())


def test_pyproject_uses_the_free_name_and_keeps_the_command():
    project = _pyproject(ROOT)["project"]
    assert project["name"] == DIST_NAME
    assert canonical(DIST_NAME) != "cryoforge"
    assert project["scripts"] == {"cryoforge": "cryoforge.cli:main"}


def test_plugin_template_depends_on_the_core_distribution():
    project = _pyproject(TEMPLATE)["project"]
    deps = {requirement_name(r) for r in project["dependencies"]}
    assert canonical(DIST_NAME) in deps
    assert "cryoforge" not in deps, "the template would pull the unrelated `cryoforge` from PyPI"
    # the entry-point name equals the distribution name (pluggy skips a second one with that name)
    assert list(project["entry-points"][GROUP]) == [project["name"]]


def test_docs_install_lines_use_the_distribution_name():
    guide = (ROOT / "docs" / "writing-a-plugin.md").read_text()
    assert f'dependencies = ["{DIST_NAME}"]' in guide
    assert 'dependencies = ["cryoforge"]' not in guide
    assert DIST_NAME in (ROOT / "README.md").read_text()
    assert DIST_NAME in (TEMPLATE / "README.md").read_text()


def test_installed_metadata_names_the_distribution():
    try:
        meta = metadata(DIST_NAME)
    except PackageNotFoundError:
        pytest.fail(f"{DIST_NAME} is not installed; {REINSTALL}")
    assert meta["Name"] == DIST_NAME
    assert meta["Version"] == _pyproject(ROOT)["project"]["version"]
    assert cryoforge.__version__ == installed_version() == meta["Version"] != UNKNOWN_VERSION
    # exactly one distribution provides the import package: no leftover install under the old name
    providers = {canonical(d) for d in packages_distributions().get("cryoforge", [])}
    assert providers == {canonical(DIST_NAME)}, f"`cryoforge` provided by {sorted(providers)}; {REINSTALL}"
    (script,) = entry_points(group="console_scripts", name="cryoforge")
    assert script.dist is not None and canonical(script.dist.name) == canonical(DIST_NAME)


def test_every_plugin_entry_point_is_named_after_its_distribution():
    eps = list(entry_points(group=GROUP))
    for ep in eps:
        assert ep.dist is not None, ep
        assert canonical(ep.name) == canonical(ep.dist.name), (
            f"entry point {ep.name!r} of {ep.dist.name!r} in group {GROUP!r}: name it after the distribution"
        )
    # the core registers its built-ins directly, not through the group
    assert all(canonical(ep.dist.name) != canonical(DIST_NAME) for ep in eps)


def test_builtin_plugin_versions_are_the_distribution_version(monkeypatch):
    monkeypatch.setenv("CRYOFORGE_DISABLE_PLUGIN_AUTOLOAD", "1")
    versions = plugin_versions(get_plugin_manager())
    assert {versions[name] for name in DEFAULT_PLUGINS} == {installed_version()}
