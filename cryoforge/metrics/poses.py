"""Pose errors against known poses, after the best global alignment over both hands (cryoAI's metrics)."""

from __future__ import annotations

import torch

from cryoforge.ops.rotations import align_rotations, geodesic_distance_deg


def pose_errors(
    pred_rot: torch.Tensor,
    true_rot: torch.Tensor,
    pred_shift_a: torch.Tensor | None = None,
    true_shift_a: torch.Tensor | None = None,
    pixel_size_angstrom: float = 1.0,
    keep: torch.Tensor | None = None,
) -> dict[str, float]:
    """cryoAI's pose metrics after the best global alignment over both hands.

    With ``keep`` (``(N,)`` bool), only those particles are scored (the others are junk: they
    have no true pose of the molecule), and ``n_junk_excluded`` says how many were left out.

    Returns the median squared Frobenius norm ``‖R_pred A − R_true‖²``, the median and mean
    angular error in degrees, the hand, and (when shifts are given) the translation error per
    particle after the in-plane part of one global 3D translation is removed
    (:func:`shift_errors_px`): its median and 90th percentile in px, its mean square in px² and
    Å², and that translation (``trans_global_px``, px, the predicted map's frame).
    """
    n_excluded = None
    if keep is not None:
        keep = keep.bool()
        n_excluded = int((~keep).sum())
        pred_rot, true_rot = pred_rot[keep], true_rot[keep]
        if pred_shift_a is not None and true_shift_a is not None:
            pred_shift_a, true_shift_a = pred_shift_a[keep], true_shift_a[keep]
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
        err_px, T = shift_errors_px(pred_rot, pred_shift_a, true_shift_a, pixel_size_angstrom)
        out["trans_median_px"] = float(err_px.median())
        out["trans_p90_px"] = float(err_px.quantile(0.9))
        out["trans_mse_px2"] = float(err_px.pow(2).mean())
        out["trans_mse_angstrom2"] = out["trans_mse_px2"] * pixel_size_angstrom**2
        out["trans_global_px"] = [float(t) for t in T]
    if n_excluded is not None:
        out["n_junk_excluded"] = n_excluded  # type: ignore[assignment]
    out["_A"] = A  # type: ignore[assignment]
    return out


def shift_errors_px(
    pred_rot: torch.Tensor,
    pred_shift_a: torch.Tensor,
    true_shift_a: torch.Tensor,
    pixel_size_angstrom: float = 1.0,
    translation_px: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-particle origin errors ``(N,)`` in px, up to one global 3D translation of the map.

    A map moved by ``T`` (px, ``(x, y, z)``) changes the origin of a particle at pose ``R`` by
    ``(R T)_xy``, so two reconstructions that differ only in where the molecule sits in the box
    have origins that differ by that amount. ``translation_px`` is that translation when it is
    known (a map alignment's); otherwise it is the least-squares fit of
    ``o_pred − o_true ≈ (R_pred T)_xy`` over all particles (3 unknowns).

    Parameters
    ----------
    pred_rot
        ``(N, 3, 3)`` predicted rotations (the frame of the predicted map).
    pred_shift_a, true_shift_a
        ``(N, 2)`` origins in Å, the file's sign.

    Returns
    -------
    errors
        ``(N,)`` distances in px after removing ``(R_pred T)_xy``.
    translation
        ``(3,)`` the ``T`` used, px.
    """
    d = (pred_shift_a.double() - true_shift_a.double()) / pixel_size_angstrom
    rows = pred_rot.double()[:, :2, :]  # (N, 2, 3): the in-plane part of R T
    if translation_px is None:
        translation_px = torch.linalg.lstsq(rows.reshape(-1, 3), d.reshape(-1, 1)).solution.reshape(3)
    T = translation_px.double()
    return (d - rows @ T).norm(dim=-1), T
