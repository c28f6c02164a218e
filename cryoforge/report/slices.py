"""``slices.png``: central slices along z, y and x and a few projections of a map, in Å."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cryoforge.io.atomic import atomic_path


def central_slices(vol: np.ndarray) -> list[tuple[str, np.ndarray, tuple[str, str]]]:
    """The three central sections of a ``(L, L, L)`` map ``[z, y, x]`` through voxel ``L//2``.

    Returns
    -------
    ``(title, image, (horizontal axis, vertical axis))`` for the planes ⊥ z ``(y, x)``,
    ⊥ y ``(z, x)`` and ⊥ x ``(z, y)``; ``image[row, col]`` with rows along the vertical axis.
    """
    c = vol.shape[0] // 2
    return [
        ("central slice ⊥ z", vol[c], ("x", "y")),
        ("central slice ⊥ y", vol[:, c, :], ("x", "z")),
        ("central slice ⊥ x", vol[:, :, c], ("y", "z")),
    ]


def diagonal_view() -> torch.Tensor:
    """``(3, 3)`` rotation ``A`` whose columns are x′ = (1, -1, 0)/√2, y′ = (1, 1, -2)/√6 and the
    body diagonal (1, 1, 1)/√3, in ``(x, y, z)``: ``V(A x)`` summed along z looks down the diagonal."""
    return torch.tensor(
        [
            [1 / 2**0.5, 1 / 6**0.5, 1 / 3**0.5],
            [-1 / 2**0.5, 1 / 6**0.5, 1 / 3**0.5],
            [0.0, -2 / 6**0.5, 1 / 3**0.5],
        ]
    )


def projections(vol: np.ndarray) -> list[tuple[str, np.ndarray, tuple[str, str]]]:
    """Sums of a ``(L, L, L)`` map ``[z, y, x]`` along z, y, x and one oblique direction.

    The oblique view rotates the map (trilinear, about voxel ``L//2``; :func:`diagonal_view`) and
    sums along z: it looks down the body diagonal (1, 1, 1).
    """
    from cryoforge.metrics.resample import rotate_map

    oblique = rotate_map(torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float32)), diagonal_view())
    return [
        ("projection along z", vol.sum(0), ("x", "y")),
        ("projection along y", vol.sum(1), ("x", "z")),
        ("projection along x", vol.sum(2), ("y", "z")),
        ("projection along (1, 1, 1)", oblique.numpy().sum(0), ("x′", "y′")),
    ]


def extent_angstrom(L: int, pixel_size_angstrom: float) -> tuple[float, float, float, float]:
    """``imshow`` extent in Å, voxel ``L//2`` at 0: pixel edges ``-(L//2 + ½)`` … ``L - L//2 - ½``."""
    lo, hi = (-(L // 2) - 0.5) * pixel_size_angstrom, (L - L // 2 - 0.5) * pixel_size_angstrom
    return lo, hi, lo, hi


def plot_slices(vol: np.ndarray, pixel_size_angstrom: float, path: str | Path, title: str = "") -> None:
    """Write ``slices.png``: central slices (top row) and projections (bottom row), axes in Å.

    Parameters
    ----------
    vol
        ``(L, L, L)`` real map ``[z, y, x]`` (non-finite voxels are drawn as 0).
    pixel_size_angstrom
        Voxel size in Å; the axes are in Å with the box centre at 0.
    path
        Output PNG (written atomically).
    title
        Shown above the panels, after the box and pixel size.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vol = np.nan_to_num(np.asarray(vol, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    L = vol.shape[-1]
    ext = extent_angstrom(L, pixel_size_angstrom)
    fig, axes = plt.subplots(2, 4, figsize=(13, 6.6))
    rows = [central_slices(vol), projections(vol)]
    for r, panels in enumerate(rows):
        lo = min(float(p[1].min()) for p in panels)
        hi = max(float(p[1].max()) for p in panels)
        for c, (name, img, (h, v)) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", origin="lower", extent=ext, vmin=lo, vmax=hi if hi > lo else lo + 1)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel(f"{h} (Å)", fontsize=8)
            ax.set_ylabel(f"{v} (Å)", fontsize=8)
            ax.tick_params(labelsize=7)
    hist = axes[0, 3]
    hist.hist(vol.ravel(), bins=80, color="0.3", log=True)
    hist.set_title("voxel values", fontsize=9)
    hist.set_xlabel("density (map units)", fontsize=8)
    hist.tick_params(labelsize=7)
    head = f"L = {L}, {pixel_size_angstrom:.3g} Å/px, box {L * pixel_size_angstrom:.1f} Å"
    fig.suptitle(f"{title} — {head}" if title else head, fontsize=10)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.08, top=0.9, wspace=0.35, hspace=0.4)  # fast
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
