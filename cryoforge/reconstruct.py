"""Known-pose reconstruction from files (``cryoforge reconstruct``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cryoforge.errors import InputFileError
from cryoforge.io.mrc import write_mrc
from cryoforge.io.writable import check_writable_file
from cryoforge.ops.projection import backproject
from cryoforge.plugins import load_registry
from cryoforge.sources import SUFFIX_TO_SOURCE


def reconstruct_file(particles: Path, out_map: Path, poses_pkl: str | None, use_ctf: bool) -> Path:
    """Backproject a particle file with its known poses (or a cryoDRGN pose pickle) into a map."""
    check_writable_file(out_map, "--out")
    name = SUFFIX_TO_SOURCE.get(particles.suffix.lower())
    if name is None:
        raise InputFileError(particles, "expected .star, .cs or .mrcs", "PARTICLES")
    opts: dict = {"path": str(particles), "normalize": False}
    if poses_pkl:
        if name != "mrcs":
            raise InputFileError(poses_pkl, "--poses goes with a bare .mrcs stack", "--poses")
        opts["poses"] = poses_pkl
    source = load_registry().build("source", name, opts)
    if source.poses is None:
        raise InputFileError(particles, "no poses (give --poses or a file with angles)", "rlnAngleRot")
    index = np.arange(len(source))
    images = torch.from_numpy(source.read_images(index))
    ctf = None
    if use_ctf and source.ctf is not None:
        from cryoforge.imaging.cryoai import CryoAIImaging
        from cryoforge.types import BuildContext

        im = CryoAIImaging(
            CryoAIImaging.Options(), BuildContext(source.image_size, source.pixel_size_angstrom)
        )
        ctf = im.ctf_values(source.ctf).double()
    vol = backproject(
        images, source.poses.rotation, ctf, shift_px=source.poses.shift_angstrom / source.pixel_size_angstrom
    )
    write_mrc(out_map, vol.numpy(), source.pixel_size_angstrom)
    return out_map
