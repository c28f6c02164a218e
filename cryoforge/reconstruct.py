"""Known-pose reconstruction from files (``cryoforge reconstruct``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cryoforge.errors import InputFileError
from cryoforge.io.mrc import write_mrc
from cryoforge.io.outputs import refuse_existing, refuse_input_overlap, source_input_paths
from cryoforge.ops.projection import backproject
from cryoforge.plugins import load_registry
from cryoforge.sources import SUFFIX_TO_SOURCE


def reconstruct_file(
    particles: Path,
    out_map: Path,
    poses_pkl: str | None,
    use_ctf: bool,
    ind: str | None = None,
    first: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Backproject a particle file with its known poses (or a cryoDRGN pose pickle) into a map.

    ``ind``/``first`` restrict it to a subset (:func:`cryoforge.sources.subsets.select_particles`).
    ``out_map`` must not exist unless ``overwrite``, and is never one of the inputs.
    """
    name = SUFFIX_TO_SOURCE.get(particles.suffix.lower())
    if name is None:
        raise InputFileError(particles, "expected .star, .cs or .mrcs", "PARTICLES")
    opts: dict = {"path": str(particles), "normalize": False, "ind": ind, "first": first}
    if poses_pkl:
        if name != "mrcs":
            raise InputFileError(poses_pkl, "--poses goes with a bare .mrcs stack", "--poses")
        opts["poses"] = poses_pkl
    source = load_registry().build("source", name, opts)
    refuse_input_overlap([out_map], [particles, poses_pkl, *source_input_paths(source)], "--out")
    refuse_existing(out_map, "--out", overwrite)
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
