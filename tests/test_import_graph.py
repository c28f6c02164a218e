"""The package's import graph: no circles, and imports run one way down the layers.

Every ``import`` of a module under ``cryoforge/`` counts, wherever it is written: at module level,
inside a function, under ``if TYPE_CHECKING:``; relative imports are resolved. ``from pkg import
name`` is an import of ``pkg.name`` when that is a module, else of ``pkg``. A package's
``__init__`` runs before any of its modules for every importer alike, so that implicit step is not
an edge; an explicit import of a package (``from cryoforge.engine import RUNNERS``) is.
The layers are those of ``docs/architecture.md``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cryoforge"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imported(module: str, path: Path) -> set[str]:
    """Modules of the package that ``module`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in MODULES else target)
    return {m for m in out if m in MODULES and m != module}


GRAPH = {m: _imported(m, p) for m, p in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        components.append(comp)
    return [_one_cycle(graph, comp) for comp in components]


def _one_cycle(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start = min(comp)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover


def test_cycle_finder_names_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_every_kind_of_import():
    """Function-level, TYPE_CHECKING and relative imports are all edges (checked on known ones)."""
    assert "cryoforge.engine.run" in GRAPH["cryoforge"]  # inside run()
    assert "cryoforge.schedules.base" in GRAPH["cryoforge.roles"]  # under TYPE_CHECKING
    assert "cryoforge.engine.context" in GRAPH["cryoforge.engine.callbacks"]  # TYPE_CHECKING


def test_no_import_cycles():
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles: " + "; ".join(" → ".join(c) for c in cycles)


def _area(module: str) -> str:
    """``cryoforge.engine.run`` → ``engine``; ``cryoforge`` → ``cryoforge`` (the public face)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "cryoforge"


ROLE_FOLDERS = {"sources", "encoders", "volumes", "imaging", "losses", "schedules"}
TOP = {"cli", "commands", "cryoforge", "testing"}
AREAS = {_area(m) for m in MODULES}

# What each area may import besides itself: docs/architecture.md, "What each folder may import".
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "options": set(),
    "distribution": set(),
    "hookspecs": set(),
    "option_docs": set(),
    "version": {"distribution"},
    "ops": set(),
    "types": {"ops"},
    "io": {"errors", "ops", "types", "version"},
    "config": {"errors", "options", "io"},
    "roles": {"options", "types", "schedules"},  # schedules.base.Stage, for a type annotation only
    "registry": {"errors", "options", "roles", "types"},
    **{f: {"errors", "options", "hookspecs", "ops", "types", "io", "config", "roles"} for f in ROLE_FOLDERS},
    "metrics": {"errors", "ops", "io"},
    "simulation": {"errors", "ops", "io", "config"},
    "report": {"io", "metrics"},
    "plugins": {"errors", "distribution", "hookspecs", "registry"},
    "pipeline": {"roles", "types", "ops", "losses"},  # losses.views: the image transforms
    "engine": AREAS - TOP,
    "testing": AREAS - TOP,
    "commands": AREAS - {"cli", "cryoforge", "testing"},
    "cli": {"commands", "version"},
    "cryoforge": AREAS - {"cli", "commands", "testing"},
}


def test_every_area_has_a_layer():
    assert AREAS <= set(ALLOWED), f"add {sorted(AREAS - set(ALLOWED))} to ALLOWED and docs/architecture.md"


@pytest.mark.parametrize("area", sorted(AREAS))
def test_imports_run_down_the_layers(area):
    bad = sorted(
        f"{m} → {t}"
        for m, targets in GRAPH.items()
        if _area(m) == area
        for t in targets
        if _area(t) != area and _area(t) not in ALLOWED[area]
    )
    assert not bad, f"{area} imports outside the layers below it: " + ", ".join(bad)


def test_nothing_imports_the_public_face_or_the_commands():
    """The package root, the CLI and the commands are the top: no module of the library imports them."""
    bad = sorted(
        f"{m} → {t}"
        for m, targets in GRAPH.items()
        for t in targets
        if (t == "cryoforge" or _area(t) in ("cli", "commands")) and _area(m) not in ("cli", "commands")
    )
    assert not bad, "imports of the top layer: " + ", ".join(bad)
