"""Metrics: FSC and resolution, map alignment (both hands), pose errors; tables, plots, JSON."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryoforge.io.atomic import atomic_path
from cryoforge.ops.projection import sample_volume
from cryoforge.ops.rotations import align_rotations, geodesic_distance_deg, random_rotations


def fsc(map1: torch.Tensor, map2: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Fourier shell correlation by shells one Fourier pixel wide.

    Parameters
    ----------
    map1, map2
        ``(L, L, L)`` real maps.

    Returns
    -------
    freqs
        ``(L//2 + 1,)`` shell frequencies in cycles/pixel (0 … 0.5).
    values
        ``(L//2 + 1,)`` FSC per shell.
    """
    L = map1.shape[-1]
    a = torch.fft.fftn(torch.as_tensor(map1, dtype=torch.float64))
    b = torch.fft.fftn(torch.as_tensor(map2, dtype=torch.float64))
    f = torch.fft.fftfreq(L, dtype=torch.float64)
    kz, ky, kx = torch.meshgrid(f, f, f, indexing="ij")
    shell = torch.round(torch.sqrt(kx**2 + ky**2 + kz**2) * L).long().flatten()
    n = L // 2 + 1
    keep = shell < n
    shell = shell[keep]
    a, b = a.flatten()[keep], b.flatten()[keep]
    num = torch.zeros(n, dtype=torch.float64).index_add_(0, shell, (a * b.conj()).real)
    pa = torch.zeros(n, dtype=torch.float64).index_add_(0, shell, a.abs() ** 2)
    pb = torch.zeros(n, dtype=torch.float64).index_add_(0, shell, b.abs() ** 2)
    values = (num / torch.sqrt(pa * pb).clamp_min(1e-30)).numpy()
    return np.arange(n) / L, values


def resolution_at(freqs: np.ndarray, values: np.ndarray, threshold: float) -> float:
    """Frequency (cycles/pixel) where the FSC first drops below ``threshold`` (linear crossing).

    Returns the last shell's frequency when it never drops.
    """
    for i in range(1, len(values)):
        if values[i] < threshold:
            f0, f1, v0, v1 = freqs[i - 1], freqs[i], values[i - 1], values[i]
            return float(f0 + (v0 - threshold) / (v0 - v1) * (f1 - f0)) if v0 != v1 else float(f1)
    return float(freqs[-1])


def mirror_z(volume: torch.Tensor) -> torch.Tensor:
    """``V(Jx)`` with ``J = diag(1, 1, -1)`` about the centre voxel ``L//2``."""
    out = torch.flip(volume, dims=(0,))
    return torch.roll(out, 1, dims=0) if volume.shape[0] % 2 == 0 else out


def rotate_map(volume: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``W(x) = V(A x)`` (trilinear), about the centre voxel."""
    L = volume.shape[-1]
    r = torch.arange(L, dtype=torch.float32) - L // 2
    gz, gy, gx = torch.meshgrid(r, r, r, indexing="ij")
    pts = torch.stack([gx, gy, gz], -1) @ A.float().T
    return sample_volume(volume, pts)


def translate_align(moving: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Integer translation maximising the cross-correlation; returns the moved map and the CC."""
    fa, fb = torch.fft.fftn(moving.double()), torch.fft.fftn(ref.double())
    cc = torch.fft.ifftn(fb * fa.conj()).real
    idx = int(cc.argmax())
    shift = np.unravel_index(idx, cc.shape)
    moved = torch.roll(moving, shifts=tuple(int(s) for s in shift), dims=(0, 1, 2))
    return moved, _corr(moved, ref)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()).clamp_min(1e-30))


@dataclass
class MapAlignment:
    aligned: torch.Tensor
    mirrored: bool
    rotation: torch.Tensor
    correlation: float


def align_map(
    moving: torch.Tensor,
    ref: torch.Tensor,
    rotation: torch.Tensor | None = None,
    mirrored: bool | None = None,
    n_search: int = 300,
    seed: int = 0,
) -> MapAlignment:
    """Align ``moving`` onto ``ref``: both hands, a global rotation, then a translation.

    With ``rotation``/``mirrored`` (from :func:`cryoforge.ops.rotations.align_rotations` on the
    poses, ``true ≈ pred' · A``) the map is mirrored if needed and resampled at ``A x``. Without,
    ``n_search`` random rotations per hand are scored by correlation and the best is kept.
    """
    moving, ref = moving.float(), ref.float()
    if rotation is not None:
        m = mirror_z(moving) if mirrored else moving
        aligned, cc = translate_align(rotate_map(m, rotation), ref)
        return MapAlignment(aligned, bool(mirrored), rotation, cc)
    gen = torch.Generator().manual_seed(seed)
    cands = torch.cat([torch.eye(3)[None], random_rotations(n_search, gen)])
    best: MapAlignment | None = None
    for mir in (False, True):
        m = mirror_z(moving) if mir else moving
        hand_best: MapAlignment | None = None
        for A in cands:
            aligned, cc = translate_align(rotate_map(m, A), ref)
            if hand_best is None or cc > hand_best.correlation:
                hand_best = MapAlignment(aligned, mir, A, cc)
        assert hand_best is not None
        hand_best = _refine_rotation(m, ref, hand_best, gen)
        if best is None or hand_best.correlation > best.correlation:
            best = hand_best
    assert best is not None
    return best


def _refine_rotation(
    moving: torch.Tensor,
    ref: torch.Tensor,
    start: MapAlignment,
    gen: torch.Generator,
    steps_deg: tuple[float, ...] = (8, 4, 2, 1, 0.5),
) -> MapAlignment:
    """Local search around a coarse rotation: random small perturbations, shrinking step."""
    from cryoforge.ops.rotations import rotvec_to_matrix

    best = start
    for step in steps_deg:
        axes = torch.nn.functional.normalize(torch.randn(24, 3, generator=gen, dtype=torch.float64), dim=1)
        for D in rotvec_to_matrix(axes * math.radians(step)).float():
            A = D @ best.rotation.float()
            aligned, cc = translate_align(rotate_map(moving, A), ref)
            if cc > best.correlation:
                best = MapAlignment(aligned, best.mirrored, A, cc)
    return best


def pose_errors(
    pred_rot: torch.Tensor,
    true_rot: torch.Tensor,
    pred_shift_a: torch.Tensor | None = None,
    true_shift_a: torch.Tensor | None = None,
    pixel_size_angstrom: float = 1.0,
) -> dict[str, float]:
    """cryoAI's pose metrics after the best global alignment over both hands.

    Returns the median squared Frobenius norm ``‖R_pred A − R_true‖²``, the median and mean
    angular error in degrees, the hand, and (when shifts are given) the mean squared translation
    error in px² and Å².
    """
    A, mirrored, aligned = align_rotations(pred_rot.double(), true_rot.double())
    frob = (aligned - true_rot.double()).pow(2).sum((-1, -2))
    ang = geodesic_distance_deg(aligned, true_rot)
    out = {
        "rot_median_frobenius2": float(frob.median()),
        "rot_median_deg": float(ang.median()),
        "rot_mean_deg": float(ang.mean()),
        "mirrored": bool(mirrored),
    }
    if pred_shift_a is not None and true_shift_a is not None:
        d2 = (pred_shift_a.double() - true_shift_a.double()).pow(2).sum(-1).mean()
        out["trans_mse_angstrom2"] = float(d2)
        out["trans_mse_px2"] = float(d2) / pixel_size_angstrom**2
    out["_A"] = A  # type: ignore[assignment]
    return out


@dataclass
class FSCReport:
    freqs: np.ndarray
    values: np.ndarray
    pixel_size_angstrom: float

    def resolution_angstrom(self, threshold: float) -> float:
        f = resolution_at(self.freqs, self.values, threshold)
        return self.pixel_size_angstrom / f if f > 0 else math.inf

    def summary(self, thresholds: tuple[float, ...] = (0.5, 0.143)) -> dict[str, float]:
        out = {}
        for t in thresholds:
            f = resolution_at(self.freqs, self.values, t)
            out[f"resolution_{t}_angstrom"] = self.pixel_size_angstrom / f if f > 0 else math.inf
            out[f"resolution_{t}_px"] = 1 / f if f > 0 else math.inf
        return out


def fsc_report(map1: torch.Tensor, map2: torch.Tensor, pixel_size_angstrom: float) -> FSCReport:
    freqs, values = fsc(map1, map2)
    return FSCReport(freqs, values, pixel_size_angstrom)


def plot_fsc(
    curves: dict[str, FSCReport], path: str | Path, thresholds: tuple[float, ...] = (0.5, 0.143)
) -> None:
    """Write an FSC plot (PNG) with resolution in Å⁻¹ on the x axis and threshold lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, rep in curves.items():
        res = ", ".join(f"{t}: {rep.resolution_angstrom(t):.1f} Å" for t in thresholds)
        ax.plot(rep.freqs / rep.pixel_size_angstrom, rep.values, label=f"{label} ({res})")
    for t in thresholds:
        ax.axhline(t, ls="--", lw=0.8, color="gray")
        ax.text(0, t + 0.01, f"{t}", fontsize=7, color="gray")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def write_json(path: str | Path, data: dict) -> None:
    clean = {k: v for k, v in data.items() if not k.startswith("_")}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(clean, indent=2, default=float))
