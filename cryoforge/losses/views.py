"""Image views a loss may ask for, each with the map of its pose back to the original image."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from cryoforge.ops.images import rotate_pi
from cryoforge.ops.rotations import rotate_pose_pi
from cryoforge.types import Pose


@dataclass(frozen=True)
class View:
    """``transform`` maps images to the view; ``pose_to_original`` maps a view's pose back."""

    transform: Callable[[torch.Tensor], torch.Tensor]
    pose_to_original: Callable[[Pose], Pose]


def _rot_pi_pose(pose: Pose) -> Pose:
    return Pose(*rotate_pose_pi(pose.rotation, pose.shift_angstrom))


VIEWS: dict[str, View] = {
    "identity": View(lambda x: x, lambda p: p),
    "rot180": View(rotate_pi, _rot_pi_pose),  # an involution: the same map goes back
}
