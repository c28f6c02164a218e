"""Portable runs: ``config.json`` names inputs by absolute path and the run's own files relative
to the run folder, so ``run --resume RUN`` and ``infer RUN`` work from any working directory.

Which options are paths: the top-level :data:`TOP_LEVEL_PATHS`, for each component the names
in its ``Options.path_options`` (a class attribute; :class:`cryoforge.sources.base.StackOptions`
lists ``path``, ``datadir`` and ``ind``), and a search stage's ``initial_map``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryoforge.config import ROLES, RunConfig, load_config_file
from cryoforge.errors import CryoforgeError, InputFileError
from cryoforge.registry import Registry

TOP_LEVEL_PATHS = ("output_dir", "ground_truth_map")


def _component_options(data: dict[str, Any], registry: Registry) -> Iterator[tuple[type, dict[str, Any]]]:
    """``(Options model, options dict)`` of each role's component in a config dump (the dict is the
    dump's own, so edits land in it); unknown components are skipped (prepare() reports them)."""
    for role in ROLES:
        comp = data.get(role) or {}
        try:
            cls = registry.get(role, comp.get("name", ""))
        except CryoforgeError:
            continue
        yield cls.Options, comp.setdefault("options", {})


def _path_slots(data: dict[str, Any], registry: Registry) -> Iterator[tuple[dict[str, Any], str]]:
    """``(container, key)`` of every path value in a config dump (``None`` and ``""`` skipped)."""
    for key in TOP_LEVEL_PATHS:
        if data.get(key):
            yield data, key
    for option_model, options in _component_options(data, registry):
        for opt in getattr(option_model, "path_options", ()):
            if isinstance(options.get(opt), str) and options[opt]:
                yield options, opt
    # a search stage's starting map: the default schedule's search table, or a staged stage's options
    options = (data.get("schedule") or {}).get("options") or {}
    tables = [options.get("search")] + [
        st.get("options") for st in options.get("stages") or [] if isinstance(st, dict)
    ]
    for table in tables:
        if isinstance(table, dict) and isinstance(table.get("initial_map"), str) and table["initial_map"]:
            yield table, "initial_map"


def absolute_inputs(config: RunConfig, registry: Registry, *bases: Path) -> RunConfig:
    """``config`` with every path option absolute.

    A relative path is taken from the first of ``bases`` (default: the cwd) where it exists, else
    from the first.
    """
    bases = bases or (Path.cwd(),)
    data = config.model_dump()
    for container, key in _path_slots(data, registry):
        options = [os.path.normpath(os.path.join(b, container[key])) for b in bases]
        container[key] = next((o for o in options if os.path.exists(o)), options[0])
    return RunConfig.model_validate(data)


def portable_json(config: RunConfig, registry: Registry, run_dir: Path) -> str:
    """``config.json`` text: inputs absolute, files inside ``run_dir`` relative to it (itself ``.``)."""
    run_dir = Path(os.path.abspath(run_dir))
    data = absolute_inputs(config, registry).model_dump(mode="json", exclude={"plugins"})
    for container, key in _path_slots(data, registry):
        p = Path(container[key])
        if p == run_dir or run_dir in p.parents:
            container[key] = os.path.relpath(p, run_dir)
    return json.dumps(data, indent=2, ensure_ascii=False)


def with_stored_defaults(config: RunConfig, registry: Registry) -> RunConfig:
    """A run's stored ``config``, each option it lacks that its component lists in
    ``Options.stored_defaults`` set to the value it had before it existed.

    A run folder's ``config.json`` holds every option resolved, so a missing one was added to
    cryoforge after the run was written: today's default might not be what the run did (an encoder
    trained on raw images must read raw images). Unknown components are left as they are.
    """
    data = config.model_dump()
    for option_model, options in _component_options(data, registry):
        for key, value in getattr(option_model, "stored_defaults", {}).items():
            options.setdefault(key, value)
    return RunConfig.model_validate(data)


def load_run_config(run_dir: str | Path, plugins_dirs: list[str] | None = None) -> RunConfig:
    """A run's ``config.json``, relative paths taken from the run folder (``output_dir`` = it), and
    options added since the run was written as the run had them (:func:`with_stored_defaults`).

    Raises
    ------
    InputFileError
        When ``run_dir`` holds no ``config.json``.
    """
    from cryoforge.plugins import load_registry

    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        raise InputFileError(path, "no config.json: not a cryoforge run directory", "RUN_DIR")
    registry = load_registry(plugins_dirs)
    config = with_stored_defaults(load_config_file(path), registry)
    # relative paths are the run's own files; a config.json written before runs were portable
    # named inputs relative to the folder the run started from, tried second
    config = absolute_inputs(config, registry, Path(os.path.abspath(run_dir)), Path.cwd())
    return config.model_copy(update={"output_dir": os.path.abspath(run_dir)})
