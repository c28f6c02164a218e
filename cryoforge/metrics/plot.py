"""The FSC plot: curves against spatial frequency in Å⁻¹, thresholds and their crossings marked."""

from __future__ import annotations

from pathlib import Path

from cryoforge.io.atomic import atomic_path
from cryoforge.metrics.fsc import FSCReport


def plot_fsc(
    curves: dict[str, FSCReport],
    path: str | Path,
    thresholds: tuple[float, ...] = (0.5, 0.143),
    half_bit: bool = False,
    note: str | None = None,
) -> None:
    """Write an FSC plot (PNG): spatial frequency in Å⁻¹, the thresholds as dashed lines, and
    each crossing marked with its resolution in Å as :meth:`FSCReport.resolution_label` reports
    it (``"≤ 6.0 Å (Nyquist)"`` at the edge; ``"not reached (> 96.0 Å)"``, with no line, when the
    curve is below the threshold from the first shell: never a resolution coarser than the box).

    With ``half_bit`` the half-bit curve of the first curve's box (:func:`half_bit_curve`, which
    accounts for the number of voxels per shell) is drawn too, dotted; ``note`` is written on the
    plot (e.g. the verdict "no consistent structure")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (label, rep) in enumerate(curves.items()):
        res = ", ".join(f"{t}: {rep.resolution_label(t)}" for t in thresholds)
        color = f"C{i}"
        ax.plot(rep.freqs / rep.pixel_size_angstrom, rep.values, color=color, label=f"{label} ({res})")
        for t in thresholds:
            c = rep.crossing(t)
            if c.bound == "not_reached":
                continue
            f = c.freq_per_px / rep.pixel_size_angstrom
            ax.plot([f], [t], "o", color=color, ms=4)
            ax.annotate(
                f"{rep.resolution_label(t)}",
                (f, t),
                textcoords="offset points",
                xytext=(-4, 6 + 12 * i),
                ha="right",
                fontsize=7,
                color=color,
            )
    for t in thresholds:
        ax.axhline(t, ls="--", lw=0.8, color="gray")
        ax.text(
            1.0,
            t + 0.01,
            f"FSC {t}",
            fontsize=7,
            color="gray",
            ha="right",
            transform=ax.get_yaxis_transform(),
        )
    if half_bit and curves:
        rep = next(iter(curves.values()))
        ax.plot(
            rep.freqs[1:] / rep.pixel_size_angstrom,
            rep.half_bit[1:],
            ":",
            lw=1.2,
            color="k",
            label="half-bit threshold (van Heel & Schatz 2005)"
            + (
                f", of the first curve ({rep.voxel_fraction:.2f} of the box's voxels)"
                if rep.voxel_fraction < 1.0
                else ""
            ),
        )
    if note:
        ax.text(0.98, 0.97, note, fontsize=8, color="C3", ha="right", va="top", transform=ax.transAxes)
    if curves:
        ax.set_xlim(0, max(r.freqs[-1] / r.pixel_size_angstrom for r in curves.values()))
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
