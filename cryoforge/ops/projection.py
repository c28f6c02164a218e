"""Real-space projection and Fourier-space backprojection with known poses.

These are independent of the learned rendering path (which slices a Fourier representation):
simulation projects in real space, and the known-pose reconstruction grids image spectra into a 3D
Fourier grid. Agreement between them is a test of the conventions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cryoforge.ops.fft import fourier_to_volume, rfft2_images
from cryoforge.ops.grids import half_plane_query
from cryoforge.ops.slicing import central_slice_coords


def _pixel_coords_3d(L: int, device: torch.device | str | None = None) -> torch.Tensor:
    r = torch.arange(L, device=device, dtype=torch.float32) - L // 2
    gz, gy, gx = torch.meshgrid(r, r, r, indexing="ij")
    return torch.stack([gx, gy, gz], -1)  # [z, y, x, (x, y, z)]


def sample_volume(volume: torch.Tensor, points_px: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of ``(L, L, L)`` real or complex ``[z, y, x]`` data at ``(..., 3)`` points.

    Points are ``(x, y, z)`` in pixels relative to the centre voxel ``L//2``; outside is zero.
    """
    L = volume.shape[-1]
    grid = (points_px + L // 2) * (2.0 / (L - 1)) - 1
    shape = grid.shape[:-1]
    g = grid.reshape(1, 1, 1, -1, 3).to(torch.float32)
    if volume.is_complex():
        vol = torch.stack([volume.real, volume.imag]).float()
    else:
        vol = volume.float()[None]
    out = F.grid_sample(vol[None], g, mode="bilinear", padding_mode="zeros", align_corners=True)
    out = out.reshape(vol.shape[0], *shape)
    return torch.complex(out[0], out[1]) if volume.is_complex() else out[0]


def project_real_space(volume: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Projections ``P(x, y) = Σ_z V(Rᵀ r)``, whose 2D DFT is the central slice at ``Rᵀ k``.

    Parameters
    ----------
    volume
        ``(L, L, L)`` map ``[z, y, x]``.
    rotation
        ``(B, 3, 3)``.

    Returns
    -------
    ``(B, L, L)`` projections (sum over voxels, trilinear sampling).
    """
    L = volume.shape[-1]
    r = _pixel_coords_3d(L, volume.device).reshape(-1, 3)
    out = []
    for R in rotation.to(torch.float32):
        pts = r @ R  # row form of Rᵀ r
        out.append(sample_volume(volume, pts.reshape(L, L, L, 3)).sum(0))
    return torch.stack(out)


def oversampled_spectrum(volume: torch.Tensor, oversample: int = 2) -> torch.Tensor:
    """Centred 3D spectrum of a zero-padded, gridding-corrected map, for trilinear slicing.

    The map is padded to ``N = oversample · L`` and divided by the Fourier transform of the
    trilinear kernel (``sinc²`` per axis), so that trilinear interpolation of the result at any
    frequency approximates the map's exact transform ``Σ_r v(r) exp(−2πi k·r)`` (``/ L``, the
    volume convention of :mod:`cryoforge.ops.fft`).

    Parameters
    ----------
    volume
        ``(L, L, L)`` real map ``[z, y, x]``.

    Returns
    -------
    ``(N, N, N)`` complex128 spectrum ``[kz, ky, kx]``, DC at ``N // 2``, spacing ``1/N``
    cycles per map pixel.
    """
    L = volume.shape[-1]
    N = oversample * L
    r = torch.arange(L, dtype=torch.float64, device=volume.device) - L // 2
    corr = torch.sinc(r / N) ** 2
    vol = volume.double() / (corr[:, None, None] * corr[None, :, None] * corr[None, None, :])
    pad = torch.zeros((N, N, N), dtype=torch.float64, device=volume.device)
    o = N // 2 - L // 2
    pad[o : o + L, o : o + L, o : o + L] = vol
    x = torch.fft.ifftshift(pad)
    return torch.fft.fftshift(torch.fft.fftn(x)) / L


def project_fourier(
    spectrum: torch.Tensor, rotation: torch.Tensor, freqs_2d: torch.Tensor, oversample: int = 2
) -> torch.Tensor:
    """Central slices of an :func:`oversampled_spectrum` at image frequencies, zero beyond Nyquist.

    The values are the orthonormal 2D DFTs of the map's projections (Fourier slice theorem): the
    slice of ``k2`` is the spectrum at ``Rᵀ k2``.

    Parameters
    ----------
    spectrum
        ``(N, N, N)`` from :func:`oversampled_spectrum`.
    rotation
        ``(B, 3, 3)``.
    freqs_2d
        ``(M, 2)`` image frequencies in cycles/pixel.

    Returns
    -------
    ``(B, M)`` complex128.
    """
    N = spectrum.shape[-1]
    k3 = central_slice_coords(rotation.double(), freqs_2d.double())
    inside = k3.pow(2).sum(-1) < 0.25
    vals = _trilinear(spectrum, k3 * N + N // 2)
    return torch.where(inside, vals, torch.zeros_like(vals))


def _trilinear(grid: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of a complex ``[z, y, x]`` grid at ``(..., 3)`` index positions ``(x, y, z)``.

    Outside the grid is zero. Uses ``grid_sample`` on the (real, imaginary) channels in float32.
    """
    N = grid.shape[-1]
    vol = torch.stack([grid.real, grid.imag]).float()[None]  # (1, 2, N, N, N)
    g = (pos.float() * (2.0 / (N - 1)) - 1).reshape(1, 1, 1, -1, 3)
    out = F.grid_sample(vol, g, mode="bilinear", padding_mode="zeros", align_corners=True)
    out = out.reshape(2, *pos.shape[:-1]).double()
    return torch.complex(out[0], out[1])


def backproject(
    images: torch.Tensor,
    rotation: torch.Tensor,
    ctf: torch.Tensor | None = None,
    wiener: float = 1e-2,
    shift_px: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Known-pose Fourier reconstruction (trilinear gridding with a Wiener-like filter).

    Parameters
    ----------
    images
        ``(N, L, L)`` particle images.
    rotation
        ``(N, 3, 3)`` their poses.
    ctf
        ``(N, M)`` CTF values at the half-plane frequencies of :func:`half_plane_query`, or ``None``.
    wiener
        Added to the accumulated weight, relative to its mean over the filled voxels.
    shift_px
        ``(N, 2)`` origins in pixels, RELION's sign (the particle sits at ``−origin``); undone
        before gridding.
    weights
        ``(N,)`` non-negative weight of each image (soft pose assignment: one image may appear
        several times with the probabilities of its poses), or ``None`` for 1.

    Returns
    -------
    ``(L, L, L)`` real map ``[z, y, x]``.
    """
    N, L = images.shape[0], images.shape[-1]
    idx, k2 = half_plane_query(L, images.device)
    acc = BackprojectionSums.zeros(L, images.device)
    for start in range(0, N, 256):
        sl = slice(start, start + 256)
        spec = rfft2_images(images[sl].double()).reshape(-1, L * (L // 2 + 1))[:, idx]
        acc.add(
            spec,
            k2,
            rotation[sl],
            None if ctf is None else ctf[sl],
            None if shift_px is None else shift_px[sl],
            None if weights is None else weights[sl],
        )
    return acc.volume(wiener)


class BackprojectionSums:
    """Running sums ``Σ w·C·Y`` and ``Σ w·C²`` on a ``L³`` Fourier grid, for streamed batches.

    ``add`` grids a batch of image spectra; ``volume`` divides with a Wiener-like term and
    returns the map. Nothing else is kept, so memory does not grow with the number of images.
    """

    def __init__(self, num: torch.Tensor, den: torch.Tensor, L: int) -> None:
        self.num, self.den, self.L = num, den, L

    @classmethod
    def zeros(cls, L: int, device: torch.device | str | None = None) -> BackprojectionSums:
        return cls(
            torch.zeros(L**3, dtype=torch.complex128, device=device),
            torch.zeros(L**3, dtype=torch.float64, device=device),
            L,
        )

    def add(
        self,
        spectra: torch.Tensor,
        freqs_2d: torch.Tensor,
        rotation: torch.Tensor,
        ctf: torch.Tensor | None = None,
        shift_px: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> None:
        """Grid ``(B, M)`` image spectra at ``(M, 2)`` frequencies (cycles/px of the ``L`` grid).

        ``ctf`` is ``(B, M)``; ``shift_px`` ``(B, 2)`` origins (RELION's sign); ``weights``
        ``(B,)``.
        """
        from cryoforge.ops.shift import origin_phase

        L = self.L
        spec = spectra.to(torch.complex128)
        k2 = freqs_2d.double()
        if shift_px is not None:
            spec = spec * origin_phase(k2, shift_px.double()).conj()
        w = torch.ones_like(spec.real) if ctf is None else ctf.double()
        vals, wts = spec * w, w * w
        if weights is not None:
            p = weights.double().reshape(-1, 1)
            vals, wts = vals * p, wts * p
        k3 = central_slice_coords(rotation.double(), k2)
        for sign, v in ((1.0, vals), (-1.0, vals.conj())):
            _splat(self.num, self.den, sign * k3 * L + L // 2, v, wts, L)

    def volume(self, wiener: float = 1e-2) -> torch.Tensor:
        """``(L, L, L)`` real map ``[z, y, x]``: ``Σ w C Y / (Σ w C² + wiener · mean)``."""
        L = self.L
        filled = self.den > 0
        if not filled.any():
            return torch.zeros(L, L, L)
        reg = wiener * self.den[filled].mean()
        spec3 = torch.where(filled, self.num / (self.den + reg), torch.zeros_like(self.num)).reshape(L, L, L)
        return fourier_to_volume(spec3).float()


def _splat(
    num: torch.Tensor, den: torch.Tensor, pos: torch.Tensor, vals: torch.Tensor, wts: torch.Tensor, L: int
) -> None:
    pos = pos.reshape(-1, 3)
    vals, wts = vals.reshape(-1), wts.reshape(-1)
    base = torch.floor(pos)
    frac = pos - base
    base = base.long()
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                ix, iy, iz = base[:, 0] + dx, base[:, 1] + dy, base[:, 2] + dz
                wx = frac[:, 0] if dx else 1 - frac[:, 0]
                wy = frac[:, 1] if dy else 1 - frac[:, 1]
                wz = frac[:, 2] if dz else 1 - frac[:, 2]
                wt = wx * wy * wz
                ok = (ix >= 0) & (ix < L) & (iy >= 0) & (iy < L) & (iz >= 0) & (iz < L)
                flat = (iz * L + iy) * L + ix
                num.index_add_(0, flat[ok], (vals * wt)[ok])
                den.index_add_(0, flat[ok], (wts * wt)[ok])
