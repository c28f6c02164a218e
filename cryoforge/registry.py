"""Kind → name → component class.

The registry is filled from the plugin hooks (built-ins included) and is the single place that
turns a name from a config into a class. Names are unique per kind: a second provider of a name
is an error naming both.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryoforge.errors import PluginError

KINDS = ("source", "encoder", "volume", "imaging", "loss", "schedule")


@dataclass(frozen=True)
class Entry:
    """A registered component: its class and the plugin that provided it."""

    cls: type
    provider: str


class Registry:
    """Component classes by kind and name."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}

    def add(self, kind: str, cls: type, provider: str) -> None:
        """Register ``cls`` under ``kind`` and its ``name``.

        Raises
        ------
        PluginError
            If the class is not a valid component, or the name is already taken.
        """
        from cryoforge.roles import BASES

        if kind not in KINDS:
            raise PluginError(f"plugin {provider!r}: unknown kind {kind!r} (kinds: {', '.join(KINDS)})")
        if not inspect.isclass(cls) or not issubclass(cls, BASES[kind]):
            raise PluginError(
                f"plugin {provider!r}: {cls!r} registered as a {kind} but does not subclass "
                f"cryoforge.{BASES[kind].__name__}"
            )
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {provider!r}: {cls.__qualname__} has no string `name`")
        from cryoforge.options import Options

        opts = getattr(cls, "Options", None)
        if not (inspect.isclass(opts) and issubclass(opts, Options)):
            raise PluginError(
                f"plugin {provider!r}: {kind} {name!r} needs a nested `Options(cryoforge.Options)`"
            )
        if not (cls.__doc__ or "").strip():
            raise PluginError(f"plugin {provider!r}: {kind} {name!r} has no docstring")
        if name in self._entries[kind]:
            other = self._entries[kind][name]
            raise PluginError(
                f"duplicate {kind} name {name!r}: provided by both {other.provider!r} "
                f"({other.cls.__module__}.{other.cls.__qualname__}) and {provider!r} "
                f"({cls.__module__}.{cls.__qualname__})"
            )
        self._entries[kind][name] = Entry(cls, provider)

    def names(self, kind: str, pattern: str = "*") -> list[str]:
        """Sorted names of ``kind`` matching a shell-style wildcard ``pattern``."""
        self._check_kind(kind)
        return sorted(n for n in self._entries[kind] if fnmatch.fnmatchcase(n, pattern))

    def entries(self, kind: str) -> dict[str, Entry]:
        self._check_kind(kind)
        return dict(sorted(self._entries[kind].items()))

    def get(self, kind: str, name: str) -> type:
        """The class registered as ``name``; an unknown name lists what is available."""
        self._check_kind(kind)
        try:
            return self._entries[kind][name].cls
        except KeyError:
            avail = ", ".join(self.names(kind)) or "none"
            raise PluginError(f"unknown {kind} {name!r}; available: {avail}") from None

    def provider(self, kind: str, name: str) -> str:
        self.get(kind, name)
        return self._entries[kind][name].provider

    def build(self, kind: str, name: str, options: dict[str, Any] | Any = None, ctx: Any = None):
        """Instantiate component ``name`` with validated ``options`` and a build context."""
        from cryoforge.errors import ConfigError
        from cryoforge.options import format_validation_error
        from cryoforge.types import BuildContext

        cls = self.get(kind, name)
        if not isinstance(options, cls.Options):
            from pydantic import ValidationError

            try:
                options = cls.Options.model_validate(options or {})
            except ValidationError as exc:
                raise ConfigError(format_validation_error(exc, f"{kind}.options")) from None
        return cls(options, ctx or BuildContext())

    def __iter__(self) -> Iterable[tuple[str, str, Entry]]:
        for kind in KINDS:
            for name, entry in sorted(self._entries[kind].items()):
                yield kind, name, entry

    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind not in KINDS:
            raise PluginError(f"unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
