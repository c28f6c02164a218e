"""``reconstruct`` streams batches: the same map as backprojecting every image at once."""

from __future__ import annotations

import numpy as np
import torch

from cryoforge.engine.reconstruct import backproject_source
from cryoforge.imaging.cryoai import CryoAIImaging
from cryoforge.ops.projection import backproject
from cryoforge.plugins import load_registry
from cryoforge.types import BuildContext


def test_streamed_reconstruction_equals_all_at_once(tiny):
    source = load_registry().build("source", "star", {"path": str(tiny["star"]), "normalize": False})
    images = torch.from_numpy(source.read_images(np.arange(len(source))))
    im = CryoAIImaging(CryoAIImaging.Options(), BuildContext(source.image_size, source.pixel_size_angstrom))
    ctf = im.ctf_values(source.ctf).double()
    shift = source.poses.shift_angstrom / source.pixel_size_angstrom
    whole = backproject(images, source.poses.rotation, ctf, shift_px=shift)
    streamed = backproject_source(source, use_ctf=True, batch_size=5)  # 24 particles: 5 batches
    assert streamed.shape == whole.shape == (16, 16, 16)
    assert torch.allclose(streamed, whole, atol=1e-5 * whole.abs().max())
    assert whole.abs().max() > 0
