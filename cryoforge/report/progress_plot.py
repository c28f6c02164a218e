"""``progress.png``: the loss and the resolution against training time."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryoforge.io.atomic import atomic_path


@dataclass
class ResolutionSeries:
    """Resolution at successive exports: ``elapsed_s`` (training time, s) and ``angstrom``.

    ``angstrom`` is NaN where the FSC was below the threshold from the first shell (worse than the
    box: drawn as a marker at the box size, never as a number). ``label`` names the comparison
    (``"FSC 0.5 vs ground truth"``, ``"half-map FSC 0.143"``).
    """

    label: str
    elapsed_s: list[float] = field(default_factory=list)
    angstrom: list[float] = field(default_factory=list)


def resolution_series(history_path: Path, key: str, label: str) -> ResolutionSeries:
    """The values of metric ``key`` in a run's ``history.jsonl`` (one JSON object per export).

    Missing files or lines without ``key`` give an empty series; ``null``/``NaN`` become NaN.
    """
    series = ResolutionSeries(label)
    if not history_path.is_file():
        return series
    for line in history_path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if key not in entry or "elapsed_s" not in entry:
            continue
        value = entry[key]
        series.elapsed_s.append(float(entry["elapsed_s"]))
        series.angstrom.append(math.nan if value is None else float(value))
    return series


def plot_progress(
    loss_elapsed_s: Sequence[float],
    loss: Sequence[float],
    path: str | Path,
    resolution: ResolutionSeries | None = None,
    pixel_size_angstrom: float | None = None,
    box_size: int | None = None,
    stage_starts: Sequence[tuple[float, str]] = (),
) -> None:
    """Write ``progress.png``: loss (left) and resolution (right) against training time.

    Parameters
    ----------
    loss_elapsed_s, loss
        The logged steps: training time in s and the loss.
    path
        Output PNG (written atomically).
    resolution
        Resolution at each export; without points the right panel says why there is none.
    pixel_size_angstrom, box_size
        Mark Nyquist (``2 ×`` pixel size) and the box (``L ×`` pixel size); the axis never goes
        beyond the box, and exports whose FSC never reached the threshold sit on the box line.
    stage_starts
        ``(training time, stage name)`` of each stage start, drawn as dotted lines.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_res) = plt.subplots(1, 2, figsize=(11, 4))
    pts = [(t, v) for t, v in zip(loss_elapsed_s, loss, strict=True) if math.isfinite(v)]
    if pts:
        marker = "o" if len(pts) < 30 else None  # a few points stay visible
        ax_loss.plot([t for t, _ in pts], [v for _, v in pts], lw=1, color="C0", marker=marker, ms=3)
        if min(v for _, v in pts) > 0:
            ax_loss.set_yscale("log")
    else:
        ax_loss.text(0.5, 0.5, "no steps logged yet", ha="center", va="center", transform=ax_loss.transAxes)
    ax_loss.set_xlabel("training time (s)")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("loss", fontsize=10)
    for ax in (ax_loss, ax_res):
        for t, name in stage_starts:
            ax.axvline(t, ls=":", lw=0.8, color="gray")
            ax.text(
                t, 1.0, f" {name}", transform=ax.get_xaxis_transform(), fontsize=7, va="top", color="gray"
            )
    box_a = box_size * pixel_size_angstrom if box_size and pixel_size_angstrom else None
    if resolution is not None and resolution.elapsed_s:
        ok = [
            (t, a) for t, a in zip(resolution.elapsed_s, resolution.angstrom, strict=True) if math.isfinite(a)
        ]
        worse = [
            t for t, a in zip(resolution.elapsed_s, resolution.angstrom, strict=True) if not math.isfinite(a)
        ]
        if ok:
            ax_res.plot([t for t, _ in ok], [a for _, a in ok], "o-", color="C1", label=resolution.label)
            last = ok[-1][1]
            at_nyquist = pixel_size_angstrom is not None and last <= 2 * pixel_size_angstrom * (1 + 1e-6)
            text = f"≤ {last:.1f} Å (Nyquist)" if at_nyquist else f"{last:.1f} Å"  # as metrics.json says
            ax_res.annotate(text, ok[-1], textcoords="offset points", xytext=(-4, 6), ha="right", fontsize=8)
        if worse and box_a:
            ax_res.plot(worse, [box_a] * len(worse), "v", color="C3", label=f"not reached (> {box_a:.0f} Å)")
        if pixel_size_angstrom:
            nyq = 2 * pixel_size_angstrom
            ax_res.axhline(nyq, ls="--", lw=0.8, color="gray")
            ax_res.text(
                0.02,
                nyq,
                f"Nyquist {nyq:.1f} Å",
                fontsize=7,
                color="gray",
                va="top",
                ha="left",
                transform=ax_res.get_yaxis_transform(),
            )
        if box_a:
            ax_res.set_ylim(box_a * 1.05, (2 * pixel_size_angstrom) * 0.7)  # better is up; never past the box
        else:
            ax_res.invert_yaxis()
        ax_res.legend(fontsize=8, loc="lower right")
    else:
        why = "no resolution: give ground_truth_map\nor train.half_sets"
        ax_res.text(0.5, 0.5, why, ha="center", va="center", transform=ax_res.transAxes, fontsize=9)
    ax_res.set_xlabel("training time (s)")
    ax_res.set_ylabel("resolution (Å)")
    ax_res.set_title(resolution.label if resolution else "resolution", fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.9, wspace=0.25)
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
