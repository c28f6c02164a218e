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
    spectrum: torch.Tensor,
    rotation: torch.Tensor,
    freqs_2d: torch.Tensor,
    oversample: int = 2,
    dtype: torch.dtype = torch.complex128,
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
    dtype
        ``complex128``, or ``complex64`` to compute the slice coordinates in float32 as well
        (the interpolation is float32 either way): 1.6x faster, for pose scoring.

    Returns
    -------
    ``(B, M)`` of ``dtype``.
    """
    N = spectrum.shape[-1]
    real = torch.float32 if dtype == torch.complex64 else torch.float64
    # grid_sample's coordinate of frequency k is k·N·2/(N−1) + (2·(N//2)/(N−1) − 1): the scale goes
    # into the (M, 2) frequencies before the rotation, the offset is one addition
    scaled = freqs_2d.to(real) * (2.0 * N / (N - 1))
    g = central_slice_coords(rotation.to(real), scaled) + (2.0 * (N // 2) / (N - 1) - 1.0)
    vals = sample_complex_channels(torch.stack([spectrum.real, spectrum.imag]).float()[None], g, real)
    # a rotation keeps |k|: the slice leaves the Nyquist sphere where the image frequency leaves its circle
    inside = freqs_2d.to(real).pow(2).sum(-1) < 0.25
    return vals if bool(inside.all()) else vals * inside.to(real)


def sample_complex_channels(
    channels: torch.Tensor, coords: torch.Tensor, real: torch.dtype = torch.float32
) -> torch.Tensor:
    """Trilinear samples of a complex grid held as ``(1, 2, N, N, N)`` float32 (real, imaginary)
    channels ``[z, y, x]``, at ``(..., 3)`` ``grid_sample`` coordinates ``(x, y, z)`` in ``[−1, 1]``
    (``align_corners=True``: −1 and 1 are the first and last voxels).

    Outside the grid is zero. Returns ``(...)`` complex values whose parts have dtype ``real``.
    """
    g = coords.to(channels.dtype).reshape(1, 1, 1, -1, 3)
    out = F.grid_sample(channels, g, mode="bilinear", padding_mode="zeros", align_corners=True)
    out = out.reshape(2, *coords.shape[:-1]).to(real)
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

    Each sample is splatted once, at ``+k``: its Friedel mate ``conj(Y)`` at ``−k`` is added by
    mirroring the sums in :meth:`volume`. Trilinear weights are symmetric under ``k → −k``, so
    this equals splatting both, at half the cost. The sums therefore live on a grid one voxel
    wider than ``L`` (index ``L`` is the mirror of index 0 for even L), as ``(re, im, weight)``,
    plus a margin (see :func:`_splat`).
    """

    def __init__(self, sums: torch.Tensor, L: int) -> None:
        self.sums, self.L = sums, L

    @classmethod
    def zeros(cls, L: int, device: torch.device | str | None = None) -> BackprojectionSums:
        return cls(torch.zeros(3, (L + 3) ** 3, dtype=torch.float64, device=device), L)

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
        data = torch.stack([vals.real, vals.imag, wts], -1).reshape(-1, 3)
        _splat(self.sums, k3.reshape(-1, 3) * L + L // 2, data, L + 1)

    def fourier_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The sums on the centred ``(L, L, L)`` Fourier grid ``[kz, ky, kx]`` (DC at ``L//2``),
        Friedel mates included: numerator ``Σ w C Y`` (complex128) and denominator ``Σ w C²``."""
        L = self.L
        A = self.sums.reshape(3, L + 3, L + 3, L + 3)[:, 1:-1, 1:-1, 1:-1].permute(1, 2, 3, 0)  # 0 … L
        c2 = 2 * (L // 2)  # lattice index j mirrors to c2 − j
        mirror = A[c2 - L + 1 : c2 + 1, c2 - L + 1 : c2 + 1, c2 - L + 1 : c2 + 1].flip(0, 1, 2)
        A = A[:L, :L, :L]
        num = torch.complex(A[..., 0] + mirror[..., 0], A[..., 1] - mirror[..., 1])
        return num, A[..., 2] + mirror[..., 2]

    def volume(self, wiener: float = 1e-2) -> torch.Tensor:
        """``(L, L, L)`` real map ``[z, y, x]``: ``Σ w C Y / (Σ w C² + wiener · mean)``."""
        num, den = self.fourier_sums()
        return divide_sums(num, den, wiener)


def divide_sums(num: torch.Tensor, den: torch.Tensor, wiener: float = 1e-2) -> torch.Tensor:
    """``(L, L, L)`` real map from centred Fourier sums: ``num / (den + wiener · mean(den > 0))``,
    zero where ``den`` is 0 (see :meth:`BackprojectionSums.fourier_sums`)."""
    L = num.shape[-1]
    num, den = num.reshape(-1), den.reshape(-1)
    filled = den > 0
    if not filled.any():
        return torch.zeros(L, L, L)
    reg = wiener * den[filled].mean()
    spec3 = torch.where(filled, num / (den + reg), torch.zeros_like(num)).reshape(L, L, L)
    return fourier_to_volume(spec3).float()


def _splat(sums: torch.Tensor, pos: torch.Tensor, data: torch.Tensor, n: int) -> None:
    """Trilinear splat of ``(P, C)`` ``data`` at ``(P, 3)`` voxel positions ``(x, y, z)``.

    ``sums`` is ``(C, (n + 2)³)``: lattice indices ``−1 … n`` per axis (stored at ``+1``), so
    every corner of a point whose lower corner lies in ``[−1, n − 1]`` is on the grid, and no
    per-corner bounds check is needed; other points touch no index in ``[0, n − 1]`` and are
    dropped. One ``bincount`` per channel over all 8 corners.
    """
    m = n + 2
    base = torch.floor(pos)
    frac = pos - base
    base = base.long() + 1
    keep = ((base >= 0) & (base <= n)).all(-1)
    base = base * keep[:, None]
    flat0 = (base[:, 2] * m + base[:, 1]) * m + base[:, 0]
    offsets = torch.tensor(
        [dz * m * m + dy * m + dx for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)], device=pos.device
    )
    flat = (flat0[None] + offsets[:, None]).reshape(-1)
    fx, fy, fz = (frac[:, i] * keep for i in range(3))
    kx, ky, kz = ((1 - frac[:, i]) * keep for i in range(3))
    wz, wy, wx = torch.stack([kz, fz]), torch.stack([ky, fy]), torch.stack([kx, fx])
    w = (wz[:, None, None] * wy[None, :, None] * wx[None, None, :]).reshape(8, -1)  # (8, P)
    for c in range(data.shape[-1]):
        sums[c] += torch.bincount(flat, (w * data[:, c]).reshape(-1), minlength=m**3)
