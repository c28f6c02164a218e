"""Translation between two maps: the sub-pixel maximum of their periodic cross-correlation."""

from __future__ import annotations

import math

import torch

from cryoforge.metrics.resample import rfft_freqs, shift_map


def cc_peak(cc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Peaks of periodic cross-correlation maps, refined by a parabola through each axis' neighbours.

    Parameters
    ----------
    cc
        ``(B, n, n, n)`` correlation ``c[t] = Σ_x a(x - t) b(x)`` at integer shifts ``t``.

    Returns
    -------
    value
        ``(B,)`` interpolated peak values.
    shift
        ``(B, 3)`` peak positions ``(x, y, z)`` in voxels, each in ``[-n/2 - 0.5, n/2)``.
    """
    B, n = cc.shape[0], cc.shape[-1]
    c0, idx = cc.reshape(B, -1).max(1)
    ijk = [idx // (n * n), (idx // n) % n, idx % n]  # z, y, x
    b = torch.arange(B)
    value, shift = c0.clone(), []
    for d in (2, 1, 0):  # x, y, z
        lo, hi = list(ijk), list(ijk)
        lo[d], hi[d] = (ijk[d] - 1) % n, (ijk[d] + 1) % n
        cm, cp = cc[b, lo[0], lo[1], lo[2]], cc[b, hi[0], hi[1], hi[2]]
        curv = cm - 2 * c0 + cp
        ok = curv < 0
        delta = torch.where(ok, 0.5 * (cm - cp) / torch.where(ok, curv, -1.0), 0.0).clamp(-0.5, 0.5)
        value = value + 0.5 * (cp - cm) * delta + 0.5 * curv * delta**2
        shift.append(((ijk[d] + n // 2) % n - n // 2).to(cc.dtype) + delta)
    return value, torch.stack(shift, -1)


def shift_terms(L: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``rfftn`` terms of an ``(L, L, L)`` map that enter a sub-pixel correlation.

    Returns ``keep`` (flat boolean mask over the ``L·L·(L//2 + 1)`` terms), their frequencies
    ``k`` ``(M, 3)`` as ``(x, y, z)`` in cycles/pixel and weights ``w`` ``(M,)`` (2 for the terms
    standing for ``±k``, 1 on the ``kx = 0`` plane). The mean and the Nyquist planes, whose phase
    is undefined for sub-pixel shifts, are left out.
    """
    kz, ky, kx = rfft_freqs(L)
    k = torch.stack(torch.broadcast_tensors(kx, ky, kz), -1).reshape(-1, 3)
    keep = (k.abs() < 0.5).all(-1) & (k.abs().sum(-1) > 0)
    k = k[keep]
    return keep, k, torch.where(k[:, 0] == 0, 1.0, 2.0).double()


def maximise_shift(
    cross: torch.Tensor, k: torch.Tensor, w: torch.Tensor, start: torch.Tensor, iters: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximise ``c(t) = Σ_k w Re[P(k) exp(2πi k·t)]`` over continuous shifts ``t`` (Newton steps).

    ``c`` is the Fourier interpolation of the periodic cross-correlation ``Σ_x a(x - t) b(x)``
    (times the number of voxels) when ``P = conj(rfftn(a)) · rfftn(b)``.

    Parameters
    ----------
    cross
        ``(B, M)`` cross-power terms ``P`` selected by :func:`shift_terms`.
    k, w
        ``(M, 3)`` frequencies ``(x, y, z)`` in cycles/pixel and ``(M,)`` weights.
    start
        ``(B, 3)`` initial shifts in pixels (e.g. from :func:`cc_peak`).

    Returns
    -------
    shift
        ``(B, 3)`` shifts in pixels; ``start`` where Newton did not improve on it.
    value
        ``(B,)`` ``c`` at those shifts.
    """
    k, w = k.to(cross.real.dtype), w.to(cross.real.dtype)
    kk = (k[:, :, None] * k[:, None, :]).reshape(-1, 9)  # k kᵀ per term, for the Hessian

    def terms(t: torch.Tensor) -> torch.Tensor:
        phase = 2 * math.pi * (t.to(k.dtype) @ k.T)
        return cross * torch.polar(torch.ones_like(phase), phase)

    t0 = start.to(k.dtype)
    v0 = (terms(t0).real * w).sum(-1)
    t = t0.clone()
    for _ in range(iters):
        E = terms(t)
        grad = -2 * math.pi * (E.imag * w) @ k
        hess = -4 * math.pi**2 * ((E.real * w) @ kk).reshape(-1, 3, 3)
        concave = torch.linalg.eigvalsh(hess).amax(-1) < 0
        eye = torch.eye(3, dtype=k.dtype)
        step = -torch.linalg.solve(torch.where(concave[:, None, None], hess, -eye), grad[..., None])[..., 0]
        step = torch.where(concave[:, None], step, 0.0)
        norm = step.norm(dim=-1, keepdim=True)
        t = t + step * (0.5 / norm.clamp_min(0.5))
        if float(norm.max()) < 1e-6:
            break
    v = (terms(t).real * w).sum(-1)
    better = v >= v0
    return torch.where(better[:, None], t, t0), torch.where(better, v, v0)


def estimate_shift(
    moving: torch.Tensor, ref: torch.Tensor, sigma_per_px: float | None = None
) -> torch.Tensor:
    """Sub-pixel translation ``t`` maximising ``Σ_x moving(x - t) · ref(x)`` (periodic).

    The integer cross-correlation peak, refined by a parabola, starts Newton steps on the
    Fourier-interpolated correlation, so ``t`` is exact for band-limited maps.

    Parameters
    ----------
    moving, ref
        ``(L, L, L)`` maps ``[z, y, x]``.
    sigma_per_px
        Optional Gaussian low-pass ``exp(-|k|² / 2σ²)`` of both maps (σ in cycles/pixel) before
        correlating: high frequencies damaged by interpolation then cannot bias ``t``.

    Returns
    -------
    ``(3,)`` float64 ``(x, y, z)`` in pixels; ``shift_map(moving, t)`` matches ``ref``.
    """
    cross = torch.fft.rfftn(moving.double()).conj() * torch.fft.rfftn(ref.double())
    if sigma_per_px is not None:
        kz, ky, kx = rfft_freqs(moving.shape[-1])
        cross = cross * torch.exp(-(kx**2 + ky**2 + kz**2) / sigma_per_px**2)
    _, start = cc_peak(torch.fft.irfftn(cross, s=moving.shape)[None])
    keep, k, w = shift_terms(moving.shape[-1])
    shift, _ = maximise_shift(cross.reshape(1, -1)[:, keep], k, w, start, iters=20)
    return shift[0]


def translate_align(moving: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Sub-pixel translation maximising the cross-correlation; returns the moved map and the CC."""
    moved = shift_map(moving, estimate_shift(moving, ref))
    return moved, map_correlation(moved, ref)


def map_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Real-space correlation coefficient of two maps of the same shape (means removed)."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()).clamp_min(1e-30))
