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
