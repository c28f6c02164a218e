"""Pictures and report.html of a run; the report opened in a real (headless) browser from disk."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cryoforge.config import RunConfig, apply_override
from cryoforge.engine.run import run
from cryoforge.io.mrc import read_map
from cryoforge.metrics.fsc import FSCReport
from cryoforge.metrics.plot import plot_fsc
from cryoforge.report.progress_plot import ResolutionSeries, plot_progress
from cryoforge.report.slices import extent_angstrom, plot_slices
from cryoforge.testing import TINY_RUN

SMALL = {
    **TINY_RUN,
    "train.max_steps": 6,
    "train.log_every": 1,
}


def _config(tiny: dict[str, Path], out: Path, **over) -> RunConfig:
    c = RunConfig()
    base = {"source.path": str(tiny["star"]), "output_dir": str(out), **SMALL, **over}
    for k, v in base.items():
        c = apply_override(c, k, v)
    return c


@pytest.fixture(scope="module")
def tiny_run(tiny, tmp_path_factory) -> Path:
    """A 6-step run on the tiny L=16 dataset, with its ground-truth map."""
    out = tmp_path_factory.mktemp("report") / "run"
    run(_config(tiny, out, ground_truth_map=str(tiny["map"])))
    return out


def _colours(png: Path) -> int:
    with Image.open(png) as im:
        rgb = np.asarray(im.convert("RGB")).astype(np.uint32)
    return len(np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]))


def test_a_run_writes_pictures_and_a_self_contained_report(tiny_run):
    for name in ("slices.png", "progress.png", "fsc.png", "report.html"):
        assert (tiny_run / name).is_file(), name
    for name in ("slices.png", "progress.png", "fsc.png"):
        assert _colours(tiny_run / name) > 10, name  # a drawn picture, not a blank canvas
    page = (tiny_run / "report.html").read_text(encoding="utf-8")
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"(src|href)=\"(?!data:)", page)  # nothing to fetch: opens from anywhere
    assert "http://" not in page and "https://" not in page
    assert "vs ground truth" in page and "resolution_0.5" in page  # metrics, labelled
    assert '"fouriernet"' in page and "cryoforge.volumes" in page  # resolved config and plugins
    assert f"chimerax {tiny_run / 'map.mrc'}" in page


def test_half_sets_write_a_report_per_half_and_one_for_the_run(tiny, tmp_path):
    out = tmp_path / "h"
    run(_config(tiny, out, **{"train.half_sets": True, "train.max_steps": 2}))
    for d in (out, out / "half1", out / "half2"):
        assert (d / "report.html").is_file() and (d / "slices.png").is_file(), d
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count('<img src="data:image/png;base64,') == 3  # slices, progress, half-map FSC
    assert "halfmap_resolution_0.143" in page and "half1/report.html" in page
    assert "halfmap_resolution_0.143 (vs ground truth)" not in page


def test_half_sets_in_lockstep_measure_the_halfmap_fsc_at_each_export(tiny, tmp_path):
    """Exports every 0.1 ms of training (so after every step, on any machine): both halves pause
    at each export, so both half maps exist there and the run folder's history gets a half-map
    resolution per export, then the final one. Pausing and continuing from the checkpoint
    changes nothing: the half maps equal those of halves trained one after the other."""
    over = {"train.half_sets": True, "train.max_steps": 3, "train.epochs": 100, "train.pictures": False}
    run(_config(tiny, tmp_path / "lock", **over, **{"train.export_every_s": 1e-4}))
    history = [json.loads(ln) for ln in (tmp_path / "lock" / "history.jsonl").read_text().splitlines()]
    assert len(history) >= 3, history  # exports with both halves at the same time, and the end
    times = [h["elapsed_s"] for h in history]
    assert times == sorted(times) and times[0] == pytest.approx(1e-4)
    assert all("halfmap_resolution_0.143_angstrom" in h for h in history)
    for i in (1, 2):
        assert "resumed from" in (tmp_path / "lock" / f"half{i}" / "run.log").read_text()
    run(_config(tiny, tmp_path / "seq", **over))
    for i in (1, 2):
        a = read_map(tmp_path / "lock" / f"half{i}" / "map.mrc")[0]
        b = read_map(tmp_path / "seq" / f"half{i}" / "map.mrc")[0]
        np.testing.assert_array_equal(a, b)


def _capture_figure(monkeypatch) -> list:
    import matplotlib.pyplot as plt

    figs: list = []
    close = plt.close

    def keep(fig=None):
        figs.append(fig)
        close(fig)

    monkeypatch.setattr(plt, "close", keep)
    return figs


def _angstrom_numbers(texts: list[str]) -> list[float]:
    return [float(m) for t in texts for m in re.findall(r"([0-9]+(?:\.[0-9]+)?) Å", t)]


def test_fsc_plot_states_crossings_in_angstrom_and_never_beyond_the_box(tmp_path, monkeypatch):
    L, px = 32, 3.0  # a 96 Å box
    freqs = np.arange(L // 2 + 1) / L
    good = FSCReport(freqs, np.clip(1.2 - 4 * freqs, -0.1, 1.0), px)  # crosses inside the band
    bad = FSCReport(freqs, np.r_[1.0, np.full(L // 2, 0.02)], px)  # below both thresholds at shell 1
    figs = _capture_figure(monkeypatch)
    plot_fsc({"good": good, "bad": bad}, tmp_path / "fsc.png")
    ax = figs[0].axes[0]
    texts = [t.get_text() for t in ax.texts] + [t.get_text() for t in ax.get_legend().get_texts()]
    for t in (0.5, 0.143):
        assert any(good.resolution_label(t) in s for s in texts)  # each crossing, as evaluated
    assert any("not reached (> 96.0 Å)" in s for s in texts)
    assert max(_angstrom_numbers(texts)) <= 96.0  # no "150 Å" in a 96 Å box
    assert {"FSC 0.5", "FSC 0.143"} <= set(texts)  # the thresholds are marked


def test_progress_plot_resolution_axis_stops_at_the_box(tmp_path, monkeypatch):
    figs = _capture_figure(monkeypatch)
    series = ResolutionSeries("FSC 0.5 vs ground truth", [10.0, 20.0, 30.0], [math.nan, 40.0, 20.0])
    plot_progress([1.0, 2.0, 3.0], [1.0, 0.5, 0.25], tmp_path / "p.png", series, 3.0, 32)
    _, ax_res = figs[0].axes
    low, high = ax_res.get_ylim()
    assert low <= 96.0 * 1.05 and high < 6.0  # better (smaller Å) is up, Nyquist 6 Å in view
    lines = [ln for ln in ax_res.get_lines() if ln.get_label().startswith("not reached")]
    assert lines and list(lines[0].get_ydata()) == [96.0]  # the not-reached export sits at the box
    assert _colours(tmp_path / "p.png") > 10


def test_slices_are_drawn_at_the_data_scale(tmp_path, monkeypatch):
    L, px = 16, 4.0
    vol = np.zeros((L, L, L), np.float32)
    vol[L // 2, L // 2, L // 2 + 3] = 1.0  # one voxel 12 Å along +x
    figs = _capture_figure(monkeypatch)
    plot_slices(vol, px, tmp_path / "s.png")
    ax = figs[0].axes[0]
    assert ax.get_xlim() == pytest.approx(extent_angstrom(L, px)[:2]) == (-34.0, 30.0)
    assert "Å" in ax.get_xlabel() and "Å" in ax.get_ylabel()
    img = ax.get_images()[0].get_array()
    row, col = np.unravel_index(np.argmax(img), img.shape)
    x0 = extent_angstrom(L, px)[0]
    assert x0 + (col + 0.5) * px == pytest.approx(12.0) and x0 + (row + 0.5) * px == pytest.approx(0.0)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("Chromium is not installed; .ci/run installs Debian's chromium")
    pytest.skip("Chromium not installed (CI installs it; this test may skip only outside CI)")


def _browser(exe: str, *args: str, home: Path) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"]
    cmd += [f"--user-data-dir={home / 'profile'}", "--virtual-time-budget=5000", *args]
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def test_report_opens_from_disk_in_a_headless_browser(tiny_run, tmp_path):
    exe = _chromium()
    sent = tmp_path / "colleague"  # a copy alone in a folder, as when e-mailed
    sent.mkdir()
    report = shutil.copy(tiny_run / "report.html", sent / "report.html")
    url = Path(report).resolve().as_uri()
    dom = _browser(exe, "--dump-dom", url, home=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    widths = [int(w) for w in re.findall(r'data-natural-width="(\d+)"', dom.stdout)]
    assert len(widths) == 3, dom.stdout[:500]
    assert all(w > 0 for w in widths), widths  # every image decoded
    assert 'data-images-decoded="3/3"' in dom.stdout
    shot = tmp_path / "shot.png"
    res = _browser(exe, f"--screenshot={shot}", "--window-size=1200,1600", url, home=tmp_path)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    assert _colours(shot) > 50  # not blank: text and pictures were painted
