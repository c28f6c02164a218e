"""cryoforge.testing's contract checks over every registered component (the registry is the matrix)."""

from __future__ import annotations

import pytest

from cryoforge.engine import RUNNERS
from cryoforge.plugins import load_registry
from cryoforge.testing import check_component

_REG = load_registry()
PARAMS = [(k, n) for k, n, _ in _REG if k != "source"]
SMALL = {("encoder", "vgg"): {"channels": [8, 16], "head_hidden": [32]}}


@pytest.mark.parametrize("kind,name", PARAMS, ids=[f"{k}-{n}" for k, n in PARAMS])
def test_contract(kind, name, tmp_path):
    cls = _REG.get(kind, name)
    kwargs = {"volume": {"tmp_path": tmp_path}, "schedule": {"kinds": RUNNERS}}.get(kind, {})
    check_component(kind, cls, SMALL.get((kind, name)), **kwargs)


@pytest.mark.parametrize("name", _REG.names("source"))
def test_source_contract(name, tiny):
    path = {"star": tiny["star"], "cs": tiny["cs"], "mrcs": tiny["mrcs"]}[name]
    check_component("source", _REG.get("source", name), {"path": str(path)})


def test_contract_catches_a_non_hermitian_volume():
    import torch

    import cryoforge

    class Bad(cryoforge.Volume):
        """Not Hermitian."""

        name = "bad"

        class Options(cryoforge.Options):
            pass

        def __init__(self, options, ctx):
            super().__init__(options, ctx)
            self.w = torch.nn.Parameter(torch.ones(3))

        def forward(self, coords):
            return torch.complex(coords @ self.w, coords @ self.w + 1)

    with pytest.raises(AssertionError, match="not Hermitian"):
        check_component("volume", Bad)
