"""cryoAI image formation: central slice → CTF → translation phase shift → real space.

Poses mean what RELION means: the particle with origin ``o`` sits at ``−o`` in its box, and the
CTF has RELION's sign (``CTF(0) = +w``, the molecule white).
"""

from __future__ import annotations

import torch
from pydantic import Field

from cryoforge.ops.fft import irfft2_images
from cryoforge.ops.grids import half_plane_query
from cryoforge.ops.shift import origin_phase
from cryoforge.ops.slicing import central_slice_coords
from cryoforge.options import Options
from cryoforge.roles import Imaging, Volume
from cryoforge.types import BuildContext, CTFParams, Pose


class CryoAIImaging(Imaging):
    """Central slice of the volume at the pose, times the CTF, times the phase shift, to real space.

    Only the rfft2 half-plane inside the Nyquist circle is queried (≈0.39·L² coordinates per
    image); the image comes back with ``irfft2``, so it is real by construction.
    """

    name = "cryoai"

    class Options(Options):
        apply_ctf: bool = Field(True, description="multiply by the CTF when the data have one")

    def __init__(self, options: Options, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        L = ctx.image_size
        flat_index, freqs = half_plane_query(L)
        self.register_buffer("flat_index", flat_index, persistent=False)
        self.register_buffer("freqs", freqs, persistent=False)

    def pixel_sizes(self, ctf: CTFParams | None, batch: int) -> torch.Tensor:
        """``(B, 1)`` pixel size of each particle's image in Å (its optics group's, else the data's)."""
        if ctf is not None:
            return ctf.pixel_sizes(self.ctx.pixel_size_angstrom, self.freqs)
        return torch.full((batch, 1), self.ctx.pixel_size_angstrom, device=self.freqs.device)

    def ctf_values(self, ctf: CTFParams) -> torch.Tensor:
        """``(B, M)`` CTF at the queried frequencies, at each particle's own pixel size."""
        return ctf.values_at(self.freqs, self.ctx.pixel_size_angstrom)

    def forward(self, volume: Volume, pose: Pose, ctf: CTFParams | None) -> torch.Tensor:
        L = self.ctx.image_size
        B = pose.rotation.shape[0]
        coords = central_slice_coords(pose.rotation.float(), self.freqs)
        values = volume(coords).to(torch.complex64)
        if ctf is not None and self.options.apply_ctf:
            values = values * self.ctf_values(ctf)
        shift_px = pose.shift_angstrom.float() / self.pixel_sizes(ctf, B)
        values = values * origin_phase(self.freqs, shift_px)
        half = torch.zeros(B, L * (L // 2 + 1), dtype=values.dtype, device=values.device)
        half = half.index_copy(1, self.flat_index, values)
        return irfft2_images(half.reshape(B, L, L // 2 + 1), L)
