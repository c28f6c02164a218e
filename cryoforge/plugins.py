"""Build the pluggy PluginManager and the component registry.

Discovery order: the built-in modules (registered through the same hooks as anyone else), then
entry points of the group ``cryoforge`` (unless autoload is disabled), then ``*.py`` files of any
``--plugins-dir``. Environment variables:

``CRYOFORGE_BLOCK_PLUGINS``
    Comma-separated plugin names (entry-point or module names) never to load.
``CRYOFORGE_DISABLE_PLUGIN_AUTOLOAD``
    When set to a non-empty value other than ``0``, entry points are not loaded.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pluggy

from cryoforge import hookspecs
from cryoforge.distribution import installed_version
from cryoforge.errors import PluginError
from cryoforge.registry import Registry

GROUP = "cryoforge"
BLOCK_ENV = "CRYOFORGE_BLOCK_PLUGINS"
NO_AUTOLOAD_ENV = "CRYOFORGE_DISABLE_PLUGIN_AUTOLOAD"

DEFAULT_PLUGINS = (
    "cryoforge.sources",
    "cryoforge.encoders",
    "cryoforge.volumes",
    "cryoforge.imaging",
    "cryoforge.losses",
    "cryoforge.schedules",
)

HOOK_KIND = {
    "cryoforge_register_sources": "source",
    "cryoforge_register_encoders": "encoder",
    "cryoforge_register_volumes": "volume",
    "cryoforge_register_imaging": "imaging",
    "cryoforge_register_losses": "loss",
    "cryoforge_register_schedules": "schedule",
}


def blocked_names() -> set[str]:
    return {n.strip() for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()}


def autoload_enabled() -> bool:
    return os.environ.get(NO_AUTOLOAD_ENV, "") in ("", "0")


class CryoforgePluginManager(pluggy.PluginManager):
    """A PluginManager that remembers the distribution version of each entry-point plugin."""

    def __init__(self, project_name: str) -> None:
        super().__init__(project_name)
        self.dist_versions: dict[str, str] = {}


def get_plugin_manager(plugins_dirs: list[str | Path] | None = None) -> CryoforgePluginManager:
    """A PluginManager with the built-ins, entry points and local plugin files registered.

    Raises
    ------
    PluginError
        If a plugin cannot be imported or implements a hook that does not exist (misspelled).
    """
    pm = CryoforgePluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    blocked = blocked_names()
    for b in blocked:
        pm.set_blocked(b)
    for modname in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(modname), name=modname)
    if autoload_enabled():
        for ep in entry_points(group=GROUP):
            if ep.name in blocked or pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except (Exception, SystemExit) as exc:  # a broken third-party plugin: say which
                raise PluginError(
                    f"plugin {ep.name!r} ({ep.value}) failed to load: {_describe(exc)}"
                ) from None
            pm.register(plugin, name=ep.name)
            pm.dist_versions[ep.name] = ep.dist.version if ep.dist else "unknown"
    for d in plugins_dirs or []:
        _load_plugins_dir(pm, Path(d), blocked)
    check_pending(pm)
    return pm


def _load_plugins_dir(pm: pluggy.PluginManager, directory: Path, blocked: set[str]) -> None:
    if not directory.is_dir():
        raise PluginError(f"{directory}: --plugins-dir is not a directory")
    for path in sorted(directory.glob("*.py")):
        name = f"cryoforge_local_{path.stem}"
        if path.stem in blocked or name in blocked:
            continue
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:  # sys.exit() in a plugin must not end the command
            sys.modules.pop(name, None)
            raise PluginError(
                f"{path}: local plugin {path.stem!r} failed to load: {_describe(exc)}"
            ) from None
        pm.register(module, name=path.stem)


def _describe(exc: BaseException) -> str:
    """``ZeroDivisionError: division by zero``; ``called sys.exit(0)`` for a SystemExit."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r}) while loading"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def check_pending(pm: pluggy.PluginManager) -> None:
    """Fail loudly on hook implementations that match no hook (usually a misspelling)."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        known = ", ".join(sorted(n for n in dir(hookspecs) if n.startswith("cryoforge_")))
        raise PluginError(f"{exc}; known hooks: {known}") from None


def build_registry(pm: pluggy.PluginManager) -> Registry:
    """Call every registration hook, one implementation at a time, so duplicates name providers."""
    reg = Registry()
    for hook_name, kind in HOOK_KIND.items():
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():  # registration order: built-ins first
            try:
                classes = impl.function() or []
            except (Exception, SystemExit) as exc:
                raise PluginError(
                    f"plugin {impl.plugin_name!r}: {hook_name}() failed: {_describe(exc)}"
                ) from None
            for cls in classes:
                reg.add(kind, cls, impl.plugin_name)
    return reg


def load_registry(plugins_dirs: list[str | Path] | None = None) -> Registry:
    """The registry of every component available in this environment."""
    return build_registry(get_plugin_manager(plugins_dirs))


def plugin_versions(pm: CryoforgePluginManager) -> dict[str, str]:
    """Plugin name → version (cryoforge's for the built-ins, ``local`` for --plugins-dir files)."""
    out: dict[str, str] = {}
    for name, _plugin in pm.list_name_plugin():
        if name in DEFAULT_PLUGINS:
            out[name] = installed_version()
        else:
            out[name] = pm.dist_versions.get(name, "local")
    return out
