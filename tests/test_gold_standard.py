"""Gold-standard local refinement: the shell filter (against plane waves, whose spectrum is one
shell), the FSC filter of two half maps (against a signal and independent noise), the seeded split,
and a search that refines each half against its own map."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cryoforge.engine.gold_standard import fsc_filtered_halves, half_labels, half_resolution_px
from cryoforge.metrics.fsc import fsc
from cryoforge.ops.filters import shell_filter

ROOT = Path(__file__).resolve().parents[1]
L = 24


def _wave(k: tuple[int, int, int]) -> torch.Tensor:
    """``cos(2π k·x / L)`` on the ``L³`` grid: its spectrum sits at ``±k`` only."""
    z, y, x = torch.meshgrid(*(torch.arange(L, dtype=torch.float64),) * 3, indexing="ij")
    return torch.cos(2 * math.pi * (k[0] * x + k[1] * y + k[2] * z) / L)


def test_shell_filter_scales_each_shell_by_its_weight():
    w = torch.linspace(1.0, 0.0, L // 2 + 1)
    for k in [(5, 0, 0), (3, 4, 0), (0, 6, 8), (2, 2, 1)]:
        shell = round(math.sqrt(sum(c * c for c in k)))
        wave = _wave(k)
        assert torch.allclose(shell_filter(wave, w), float(w[shell]) * wave, atol=1e-10)
    corner = _wave((10, 10, 10))  # |k| = 17.3 > L/2: past the last shell, removed
    assert float(shell_filter(corner, w).abs().max()) < 1e-10
    assert shell_filter(corner.float(), w).dtype == torch.float32


def test_fsc_filter_keeps_what_the_halves_share_and_removes_their_own_noise():
    gen = torch.Generator().manual_seed(0)
    signal = shell_filter(torch.randn(L, L, L, generator=gen, dtype=torch.float64), torch.ones(5))
    signal = signal / signal.std()
    noise = [torch.randn(L, L, L, generator=gen, dtype=torch.float64) * 0.5 for _ in range(2)]
    a, b, values = fsc_filtered_halves(signal + noise[0], signal + noise[1])
    assert values[1:4].min() > 0.8 and np.abs(values[8:]).max() < 0.15
    low = torch.ones(5)
    high = torch.cat([torch.zeros(8), torch.ones(L // 2 + 1 - 8)])
    for filtered, raw in ((a, signal + noise[0]), (b, signal + noise[1])):
        kept = shell_filter(filtered, low).pow(2).sum() / shell_filter(raw, low).pow(2).sum()
        removed = shell_filter(filtered, high).pow(2).sum() / shell_filter(raw, high).pow(2).sum()
        assert float(kept) > 0.8 and float(removed) < 0.02
    assert 4.0 < half_resolution_px(values) < 8.0  # the signal stops at shell 4 (L / 4 = 6 px)
    _, same = fsc(signal, signal)
    assert half_resolution_px(same) == pytest.approx(2.0)  # Nyquist


def test_half_labels_split_evenly_and_reproducibly():
    a = half_labels(101, seed=3)
    assert sorted(a.unique().tolist()) == [0, 1] and int(a.sum()) == 51
    assert torch.equal(a, half_labels(101, seed=3))
    assert not torch.equal(a, half_labels(101, seed=4))


def test_gold_standard_search_refines_each_half_against_its_own_map(
    offcentre_clean, demo_search_run, tmp_path, caplog
):
    search = {"iterations": 12, "refine_steps_deg": [2.0, 1.0], "gold_standard": True}
    with caplog.at_level(logging.INFO, logger="cryoforge"):
        demo_search_run(offcentre_clean, tmp_path / "run", search)
    lines = [r.getMessage() for r in caplog.records if "half maps agree" in r.getMessage()]
    assert len(lines) == 2  # the half maps before each of the two steps (none after the last)
    res_px = float(lines[-1].split(" at ")[1].split(" px")[0])
    assert res_px < 3.0  # noise-free data: the halves agree nearly to Nyquist
    # as without halves (3.6° with these 12 iterations, 1,200 particles)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["rot_median_deg"] < 5.0 and metrics["trans_median_px"] < 0.5
