"""Documentation cannot drift: every hook and every built-in component is documented."""

from __future__ import annotations

from pathlib import Path

from cryoforge import hookspecs

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_hook_is_documented():
    text = (DOCS / "plugins.md").read_text()
    hooks = [n for n in dir(hookspecs) if n.startswith("cryoforge_")]
    assert len(hooks) == 7
    missing = [h for h in hooks if f"`{h}" not in text]
    assert not missing, f"undocumented hooks in docs/plugins.md: {missing}"


def test_every_builtin_component_is_documented(registry):
    text = (DOCS / "components.md").read_text()
    missing = [
        f"{k}:{n}" for k, n, e in registry if e.provider.startswith("cryoforge.") and f"`{n}`" not in text
    ]
    assert not missing, f"undocumented components in docs/components.md: {missing}"
