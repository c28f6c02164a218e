"""The plugin system: built-ins through hooks, entry points, local plugins, strictness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cryoforge.errors import PluginError
from cryoforge.plugins import (
    BLOCK_ENV,
    NO_AUTOLOAD_ENV,
    build_registry,
    get_plugin_manager,
    load_registry,
)
from cryoforge.registry import KINDS, Registry

ROOT = Path(__file__).resolve().parents[1]


def _example_registry(site: Path, **env: str) -> dict:
    """Load the registry in a *new* interpreter that sees the installed example plugin.

    The plugin is installed (real wheel metadata, entry point included) into ``site``; only a fresh
    interpreter started with ``site`` on its path can be trusted to discover it, as a user's would.
    """
    code = (
        "import json\n"
        "from cryoforge.plugins import load_registry\n"
        "reg = load_registry()\n"
        "names = reg.names('volume')\n"
        "print(json.dumps({'names': names, 'provider': reg.provider('volume', 'gaussians')"
        " if 'gaussians' in names else None}))\n"
    )
    environ = {k: v for k, v in os.environ.items() if k not in (NO_AUTOLOAD_ENV, BLOCK_ENV)}
    environ.update(env)
    environ["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    out = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_builtins_cover_every_role(registry):
    for kind in KINDS:
        assert registry.names(kind), kind
    assert {"vgg"} <= set(registry.names("encoder"))
    assert {"fouriernet"} <= set(registry.names("volume"))
    assert {"l2", "symmetrized"} <= set(registry.names("loss"))
    assert registry.provider("volume", "fouriernet") == "cryoforge.volumes"


def test_example_plugin_discovered_through_entry_points(example_plugin_site):
    found = _example_registry(example_plugin_site)
    assert "gaussians" in found["names"]
    assert found["provider"] == "cryoforge-example"


def test_disable_autoload_and_block(example_plugin_site):
    assert "gaussians" not in _example_registry(example_plugin_site, **{NO_AUTOLOAD_ENV: "1"})["names"]
    assert (
        "gaussians" not in _example_registry(example_plugin_site, **{BLOCK_ENV: "cryoforge-example"})["names"]
    )


def test_wildcards_and_unknown_name(registry):
    assert registry.names("loss", "sym*") == ["symmetrized"]
    with pytest.raises(PluginError, match=r"unknown volume 'nope'; available: .*fouriernet"):
        registry.get("volume", "nope")


def test_duplicate_names_raise_naming_both(tmp_path):
    (tmp_path / "dupe.py").write_text(
        "import cryoforge\n"
        "from cryoforge.volumes.fouriernet import FourierNet\n"
        "class Other(cryoforge.Volume):\n"
        "    '''Pretends to be fouriernet.'''\n"
        "    name = 'fouriernet'\n"
        "    class Options(cryoforge.Options):\n"
        "        pass\n"
        "    def forward(self, coords):\n"
        "        return coords[..., 0]\n"
        "@cryoforge.hookimpl\n"
        "def cryoforge_register_volumes():\n"
        "    return [Other]\n"
    )
    with pytest.raises(PluginError, match=r"duplicate volume name 'fouriernet'.*cryoforge\.volumes.*dupe"):
        load_registry([tmp_path])


def test_misspelled_hook_fails_loudly(tmp_path):
    (tmp_path / "typo.py").write_text(
        "import cryoforge\n@cryoforge.hookimpl\ndef cryoforge_register_volume():\n    return []\n"
    )
    with pytest.raises(
        PluginError, match=r"cryoforge_register_volume.*known hooks: .*cryoforge_register_volumes"
    ):
        get_plugin_manager([tmp_path])


def test_plugins_dir_adds_components(tmp_path):
    (tmp_path / "mine.py").write_text(
        "import torch, cryoforge\n"
        "class Half(cryoforge.Loss):\n"
        "    '''Half the L2 loss.'''\n"
        "    name = 'half-l2'\n"
        "    class Options(cryoforge.Options):\n"
        "        pass\n"
        "    def reduce(self, errors):\n"
        "        return errors[0].mean() / 2, torch.zeros(errors.shape[1], dtype=torch.long)\n"
        "@cryoforge.hookimpl\n"
        "def cryoforge_register_losses():\n"
        "    return [Half]\n"
    )
    reg = load_registry([tmp_path])
    assert reg.provider("loss", "half-l2") == "mine"


def test_registry_rejects_invalid_components():
    reg = Registry()

    class NoOptions:
        """doc"""

        name = "x"

    with pytest.raises(PluginError, match=r"does not subclass cryoforge\.Volume"):
        reg.add("volume", NoOptions, "p")
    import cryoforge

    class NoDoc(cryoforge.Volume):
        name = "nodoc"

        class Options(cryoforge.Options):
            pass

        def forward(self, coords):
            return coords

    with pytest.raises(PluginError, match="no docstring"):
        reg.add("volume", NoDoc, "p")


def test_hooks_return_classes_from_builtins():
    pm = get_plugin_manager()
    reg = build_registry(pm)
    assert sorted(n for n in reg.names("source")) == ["cs", "mrcs", "star"]
