"""The pose search's scoring and maps: rotations × in-plane shifts against a voxel map.

Pure functions of tensors and the particle source (no run state): the image spectra at the
search's box, the soft assignment over rotations × origins (:func:`global_iteration`), the
centring of particles on a round map, the map's centre of density and the origins that move it,
the backprojection of hypotheses, and the local refinement of rotations and origins at the
data's size. The stage that drives them is :mod:`cryoforge.engine.search`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from cryoforge.engine.collective import LOCAL, Collective
from cryoforge.engine.context import RunContext
from cryoforge.ops.fft import fourier_crop, rfft2_images
from cryoforge.ops.grids import half_plane_query
from cryoforge.ops.projection import BackprojectionSums, oversampled_spectrum, project_fourier
from cryoforge.ops.search import (
    local_rotations,
    pair_cross,
    pair_cross_batched,
    pair_power,
    pair_power_batched,
    shift_grid_px,
)
from cryoforge.ops.shift import origin_phase
from cryoforge.ops.symmetry import symmetric_reconstruction
from cryoforge.types import CTFParams


def ctf_values(
    ctf: CTFParams | None, freqs: torch.Tensor, pixel_scale: float, default_px: float
) -> torch.Tensor | None:
    """``(B, M)`` float64 CTF at ``freqs`` (cycles/px of the cropped grid), or ``None`` CTF-free.

    ``pixel_scale`` is the crop factor (original box / cropped box) applied to the particle pixel
    sizes (or to ``default_px`` when the CTF carries none).
    """
    return None if ctf is None else ctf.values_at(freqs.double(), default_px, pixel_scale)


class SearchSpectra:
    """Image spectra at one box size inside its Nyquist circle, read once from the source."""

    def __init__(
        self,
        ctx: RunContext,
        size: int,
        batch: int,
        index: np.ndarray | None = None,
        noise_power: torch.Tensor | None = None,
    ) -> None:
        """Read the particles ``index`` (dataset positions; default ``ctx.index``) in batches of ``batch``.

        With ``noise_power`` (per Fourier shell of the data,
        :func:`~cryoforge.engine.whitening.background_power_per_shell`), the spectra and the CTF
        are whitened: every score is then the coloured-noise likelihood.
        """
        source, L = ctx.source, ctx.source.image_size
        positions = ctx.index if index is None else index
        self.size = size
        self.flat, self.freqs = half_plane_query(size)
        scale = L / size
        ys, cs = [], []
        for s in range(0, len(positions), batch):
            part = positions[s : s + batch]
            imgs = torch.from_numpy(source.read_images(part)).double()
            if size != L:
                imgs = fourier_crop(imgs, size)
            ys.append(rfft2_images(imgs).reshape(len(part), -1)[:, self.flat].to(torch.complex64))
            ctf = None if source.ctf is None else source.ctf.index(torch.as_tensor(part))
            c = ctf_values(ctf, self.freqs, scale, source.pixel_size_angstrom)
            cs.append(None if c is None else c.float())
        self.Y = torch.cat(ys)
        self.C = None if cs[0] is None else torch.cat(cs)
        self.radius_px = self.freqs.norm(dim=1) * size
        if noise_power is not None:
            self.Y, self.C = _whiten(self.Y, self.C, noise_power, self.radius_px)

    def ctf(self, sl: slice) -> torch.Tensor | None:
        return None if self.C is None else self.C[sl]

    def subset(self, rows: torch.Tensor) -> SearchSpectra:
        """The same spectra for the particles ``rows`` only (a copy of their rows)."""
        out = object.__new__(SearchSpectra)
        out.size, out.flat, out.freqs, out.radius_px = self.size, self.flat, self.freqs, self.radius_px
        out.Y, out.C = self.Y[rows], None if self.C is None else self.C[rows]
        return out


def backproject_hypotheses(
    sp: SearchSpectra,
    rotation: torch.Tensor,
    weights: torch.Tensor | None,
    wiener: float,
    origin_px: torch.Tensor | None = None,
    group: str = "C1",
    coll: Collective = LOCAL,
) -> torch.Tensor:
    """Map at ``sp.size`` from the spectra with ``rotation`` ``(N, K, 3, 3)`` and ``weights`` ``(N, K)``.

    ``origin_px`` ``(N, K, 2)`` are the hypotheses' origins in pixels of the search box (RELION's
    sign), or ``None`` for centred particles; ``group`` a point group imposed on the map
    (RELION's convention, :mod:`cryoforge.ops.symmetry`). With several processes ``coll``, each
    holds its own particles' spectra and the sums are added over the processes.
    """
    N, K = rotation.shape[:2]
    acc = BackprojectionSums.zeros(sp.size)
    step = max(1, 2048 // K)
    for s in range(0, N, step):
        sl = slice(s, s + step)
        n = min(s + step, N) - s
        c = sp.ctf(sl)
        acc.add(
            sp.Y[sl].repeat_interleave(K, 0),
            sp.freqs,
            rotation[sl].reshape(-1, 3, 3),
            None if c is None else c.repeat_interleave(K, 0),
            None if origin_px is None else origin_px[sl].reshape(n * K, 2),
            None if weights is None else weights[sl].reshape(n * K),
        )
    return symmetric_reconstruction(coll.sum_sums(acc), group, wiener)


def _centred(Y: torch.Tensor, freqs: torch.Tensor, origin_px: torch.Tensor) -> torch.Tensor:
    """Spectra ``(B, M)`` of particles with origins ``(B, 2)`` px, translated back to the box centre."""
    return Y * origin_phase(freqs, origin_px).conj().to(Y.dtype)


def _error(power: torch.Tensor, cross: torch.Tensor, scaled: bool) -> torch.Tensor:
    """Squared error less ``|Y|²``: ``|CP|² − 2 Re⟨Y, CP⟩``, or with ``scaled`` at each image's best
    contrast scale ``a = Re⟨Y, CP⟩ / |CP|² ≥ 0``: ``−Re⟨Y, CP⟩² / |CP|²`` (0 when anti-correlated)."""
    if not scaled:
        return power - 2 * cross
    return -(cross.clamp_min(0) ** 2) / power.clamp_min(1e-30)


def _best_over_offsets(
    errors: Callable[[torch.Tensor], torch.Tensor], offsets_px: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise minimum of ``errors(d)`` over the offsets ``d``, and the index of the best offset."""
    best, arg = None, None
    for j, d in enumerate(offsets_px):
        e = errors(d)
        if best is None:
            best, arg = e, torch.zeros(e.shape, dtype=torch.long)
        else:
            better = e < best
            best = torch.where(better, e, best)
            arg.masked_fill_(better, j)
    return best, arg


def global_iteration(
    sp: SearchSpectra,
    volume: torch.Tensor,
    grid: torch.Tensor,
    band_px: float,
    keep: int,
    batch: int,
    origin_px: torch.Tensor | None = None,
    offsets_px: torch.Tensor | None = None,
    temperature: float = 1.0,
    coll: Collective = LOCAL,
    scaled: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
    """Score every image against every grid rotation × in-plane shift inside ``band_px``; soft top-``keep``.

    Each image ``i`` is tried at the origins ``origin_px[i] + offsets_px`` (pixels of the search
    box); every rotation keeps its best origin, and the ``keep`` best rotations are the hypotheses.
    A shift is a phase ramp on the image, so each offset is one more matrix product of the same
    projections; the power term ``C²|P|²`` does not depend on it and is computed once.
    The weights are the posterior ``exp(−E / (2 σ² T))`` of the Gaussian noise model at the
    estimated noise ``σ²``, tempered by ``temperature`` ``T ≥ 1`` (flatter: more hypotheses count).
    With several processes ``coll``, ``sp`` holds this process's particles and ``σ²`` is the
    mean over all of them. With ``scaled``, each image is compared at its own best contrast
    scale (real particles differ in ice thickness and contrast). ``progress(done, N)`` is called
    after each batch.

    Returns
    -------
    index
        ``(N, keep)`` grid indices, best first.
    weights
        ``(N, keep)`` tempered posterior weights (rows sum to 1).
    noise
        The mean squared residual per frequency at the best rotations (the noise estimate).
    origins
        ``(N, keep, 2)`` the best origin of each hypothesis (pixels of the search box).
    """
    m = sp.radius_px < band_px
    fm = sp.freqs[m]
    P = project_fourier(oversampled_spectrum(volume.double(), 2), grid, fm, dtype=torch.complex64)
    N = len(sp.Y)
    if origin_px is None:
        origin_px = torch.zeros(N, 2, dtype=torch.float64)
    if offsets_px is None:
        offsets_px = torch.zeros(1, 2, dtype=torch.float64)
    index = torch.empty(N, keep, dtype=torch.long)
    score = torch.empty(N, keep)
    origins = torch.empty(N, keep, 2, dtype=torch.float64)
    norm2 = sp.Y[:, m].abs().pow(2).sum(1)
    for s in range(0, N, batch):
        sl = slice(s, s + batch)
        Y, c = sp.Y[sl][:, m], sp.ctf(sl)
        c = None if c is None else c[:, m]
        power = pair_power(c, P, len(Y))
        best, arg = _best_over_offsets(
            lambda d, Y=Y, c=c, sl=sl, power=power: _error(
                power, pair_cross(_centred(Y, fm, origin_px[sl] + d), c, P), scaled
            ),
            offsets_px,
        )
        v, i = torch.topk(-best, keep, dim=1)
        index[sl], score[sl] = i, -v
        origins[sl] = origin_px[sl, None] + offsets_px[arg.gather(1, i)]
        if progress is not None:
            progress(min(s + batch, N), N)
    residual = coll.total(float((score[:, 0] + norm2).clamp_min(0).sum()))
    noise = residual / max(coll.total(float(N)), 1.0) / int(m.sum())
    weights = torch.softmax(-(score - score[:, :1]) / (2 * max(noise, 1e-12) * temperature), dim=1)
    return index, weights, noise, origins


def pose_errors(
    sp: SearchSpectra,
    spectrum: torch.Tensor,
    rotation: torch.Tensor,
    origin_px: torch.Tensor,
    band_px: float,
    scaled: bool = False,
) -> torch.Tensor:
    """The scores :func:`global_iteration` gives, for one given pose per image.

    ``spectrum`` is the :func:`~cryoforge.ops.projection.oversampled_spectrum` of the map at the
    box of ``sp``; ``rotation`` ``(N, 3, 3)`` and ``origin_px`` ``(N, 2)`` (px of that box) one pose
    per image of ``sp``. Returns ``(N,)`` squared errors less ``|Y|²`` inside ``band_px`` (lower is
    better; comparable with the same images' scores at other poses).
    """
    m = sp.radius_px < band_px
    fm = sp.freqs[m]
    P = project_fourier(spectrum, rotation, fm, dtype=torch.complex64)[:, None]  # (N, 1, M)
    c = None if sp.C is None else sp.C[:, m]
    Y = _centred(sp.Y[:, m], fm, origin_px).to(P.dtype)
    return _error(pair_power_batched(c, P), pair_cross_batched(Y, c, P), scaled)[:, 0]


def centre_particles(
    sp: SearchSpectra, volume: torch.Tensor, band_px: float, offsets_px: torch.Tensor, batch: int
) -> torch.Tensor:
    """Origins ``(N, 2)`` (px of the search box) that best fit each image to a round ``volume``'s projection.

    Used at the start, when the map is the rotational average of the data: its projections
    hardly depend on the rotation, so one slice scored at every offset of the wide grid centres
    every particle at the cost of a few matrix products.
    """
    m = sp.radius_px < band_px
    fm = sp.freqs[m]
    P = project_fourier(
        oversampled_spectrum(volume.double(), 2),
        torch.eye(3, dtype=torch.float64)[None],
        fm,
        dtype=torch.complex64,
    )
    # every offset's phase ramp applied to the single projection: (S, M), scored as "projections"
    ramps = origin_phase(fm, offsets_px).to(P.dtype) * P
    N = len(sp.Y)
    out = torch.empty(N, 2, dtype=torch.float64)
    for s in range(0, N, batch):
        sl = slice(s, s + batch)
        c = sp.ctf(sl)
        c = None if c is None else c[:, m]
        e = pair_power(c, ramps, len(sp.Y[sl])) - 2 * pair_cross(sp.Y[sl][:, m], c, ramps)
        out[sl] = offsets_px[e.argmin(1)]
    return out


def map_centre_px(volume: torch.Tensor) -> torch.Tensor:
    """``(3,)`` centre of mass ``(x, y, z)`` in px from the box centre of the density above 20 % of its peak.

    The density's sign is that of the map's sum (dark particles give a negative map).
    """
    v = volume.double()
    v = v * (1.0 if float(v.sum()) >= 0 else -1.0)
    w = (v - 0.2 * v.max()).clamp_min(0)
    if float(w.sum()) <= 0:
        return torch.zeros(3, dtype=torch.float64)
    L = v.shape[0]
    r = torch.arange(L, dtype=torch.float64) - L // 2
    z, y, x = w.sum((1, 2)), w.sum((0, 2)), w.sum((0, 1))
    return torch.stack([(x * r).sum(), (y * r).sum(), (z * r).sum()]) / w.sum()


def recentred_origins(
    origin_px: torch.Tensor, rotation: torch.Tensor, centre_px: torch.Tensor
) -> torch.Tensor:
    """Origins ``(..., 2)`` that move a map whose density sits at ``centre_px`` ``(x, y, z)`` to the centre.

    A map point ``x`` appears in the image of pose ``R`` at ``(R x)_xy`` and a particle sits at
    ``−origin``, so moving the map by ``−c`` while keeping the images changes every origin by
    ``−(R c)_xy``.
    """
    return origin_px - (rotation @ centre_px.to(rotation.dtype))[..., :2]


def _whiten(
    Y: torch.Tensor, C: torch.Tensor | None, noise_power: torch.Tensor, radius_px: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectra ``(B, M)`` and CTF ``(B, M)`` (ones when ``None``) times the weights ``1/σ(|k|)``."""
    from cryoforge.engine.whitening import whitening_weights

    w = whitening_weights(noise_power, radius_px)
    c = torch.ones(Y.shape, dtype=torch.float64) if C is None else C.double()
    return (Y * w.to(Y.real.dtype)).to(Y.dtype), (c * w).to(torch.float32 if C is None else C.dtype)


def particles_done(ctx: RunContext, what: str, done: int, total: int) -> None:
    """Tell the run's callbacks how far a pass over the particles is (a lightweight context, as
    ``infer --refine`` builds one, has no callbacks)."""
    emit = getattr(ctx, "emit", None)
    if emit is not None:
        emit("on_particles", what, done, total)


def _full_size_batches(
    ctx: RunContext,
    batch: int,
    index: np.ndarray | None = None,
    noise_power: torch.Tensor | None = None,
    box: int | None = None,
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor | None]]:
    """Stream ``(rows, spectra (B, M), CTF (B, M) or None)`` of the particles ``index`` (dataset
    positions, default ``ctx.index``) at the data's size, or Fourier-cropped to ``box`` px;
    ``rows`` index into ``index``. With ``noise_power``, both are whitened (:class:`SearchSpectra`)."""
    source, L = ctx.source, ctx.source.image_size
    box = L if box is None else min(box, L)
    positions = ctx.index if index is None else index
    flat, freqs = half_plane_query(box)
    for s in range(0, len(positions), batch):
        part = positions[s : s + batch]
        imgs = torch.from_numpy(source.read_images(part)).double()
        if box != L:
            imgs = fourier_crop(imgs, box)
        Y = rfft2_images(imgs).reshape(len(part), -1)[:, flat]
        ctf = None if source.ctf is None else source.ctf.index(torch.as_tensor(part))
        C = ctf_values(ctf, freqs, L / box, source.pixel_size_angstrom)
        if noise_power is not None:
            Y, C = _whiten(Y, C, noise_power, freqs.norm(dim=1) * box)
        yield slice(s, s + len(part)), Y, C


def refine_locally(
    ctx: RunContext,
    rotation: torch.Tensor,
    volume: torch.Tensor,
    step_deg: float,
    batch: int,
    wiener: float | None = None,
    origin_px: torch.Tensor | None = None,
    shift_step_px: float = 0.0,
    group: str = "C1",
    index: np.ndarray | None = None,
    base: BackprojectionSums | None = None,
    coll: Collective = LOCAL,
    noise_power: torch.Tensor | None = None,
    box: int | None = None,
    scaled: bool = False,
) -> tuple[torch.Tensor, float, torch.Tensor | None, torch.Tensor]:
    """Best of the ``3³`` local perturbations ``δ R`` × ``3²`` origin offsets of each pose at full size.

    ``origin_px`` ``(N, 2)`` are the current origins (px of the data, RELION's sign; ``None``:
    centred); each is tried at ``± shift_step_px`` in x and y together with every rotation
    (``shift_step_px = 0`` keeps them). Returns the refined ``(N, 3, 3)`` rotations, the mean
    squared residual per frequency, the backprojection at the refined poses when ``wiener`` is
    given (gridded in the same pass over the images, with the point group ``group`` imposed;
    ``None`` otherwise), and the refined origins.

    ``index`` are the particles' dataset positions (default ``ctx.index``; rows of ``rotation``
    follow it); ``base`` sums of other particles that the backprojection adds to (unchanged).
    With several processes ``coll``, each refines its own particles; the residual and the
    backprojection are over all of them (``base`` is the same on every process). With
    ``noise_power``, the images are whitened (:class:`SearchSpectra`). With ``box`` (px), the
    images are Fourier-cropped to it (``volume`` and the map returned are then ``box`` px; origins
    stay in px of the data).
    """
    L = ctx.source.image_size
    box = L if box is None else min(box, L)
    scale = box / L  # px of the box per px of the data
    _, freqs = half_plane_query(box)
    spec = oversampled_spectrum(volume.double(), 2)
    loc = local_rotations(step_deg, 1)
    N = len(rotation)
    origin = torch.zeros(N, 2, dtype=torch.float64) if origin_px is None else origin_px.double() * scale
    step = shift_step_px * scale
    offsets = shift_grid_px(step * 1.5, step) if shift_step_px > 0 else torch.zeros(1, 2)
    offsets = offsets.double()
    out = torch.empty_like(rotation)
    acc = None if wiener is None else BackprojectionSums.zeros(box)
    residual = 0.0
    for rows, Y, C in _full_size_batches(ctx, max(1, batch // 4), index, noise_power, box):
        cand = loc[None] @ rotation[rows, None]
        P = project_fourier(spec, cand.reshape(-1, 3, 3), freqs, dtype=torch.complex64)
        P = P.reshape(len(Y), len(loc), -1)
        c = None if C is None else C.float()
        power = pair_power_batched(c, P)
        best, arg = _best_over_offsets(
            lambda d, Y=Y, c=c, rows=rows, P=P, power=power: _error(
                power, pair_cross_batched(_centred(Y, freqs, origin[rows] + d).to(P.dtype), c, P), scaled
            ),
            offsets,
        )
        val, k = best.min(1)
        pick = torch.arange(len(Y))
        out[rows] = cand[pick, k]
        origin[rows] = origin[rows] + offsets[arg[pick, k]]
        residual += float((val.double() + Y.abs().pow(2).sum(1)).sum()) / Y.shape[1]
        if acc is not None:
            acc.add(Y, freqs, out[rows], C, origin[rows])
        particles_done(ctx, f"local refinement ({step_deg:g}°)", rows.stop, N)
    volume_out = None
    if acc is not None:
        coll.sum_sums(acc)
        if base is not None:
            acc.sums += base.sums
        volume_out = symmetric_reconstruction(acc, group, wiener)
    return out, coll.total(residual) / max(coll.total(float(N)), 1.0), volume_out, origin / scale


def full_size_sums(
    ctx: RunContext,
    rotation: torch.Tensor,
    batch: int,
    origin_px: torch.Tensor | None = None,
    index: np.ndarray | None = None,
    noise_power: torch.Tensor | None = None,
    box: int | None = None,
) -> BackprojectionSums:
    """Backprojection sums of the particles ``index`` (default ``ctx.index``) at the data's size (or
    Fourier-cropped to ``box`` px).

    ``rotation`` ``(N, 3, 3)`` and ``origin_px`` ``(N, 2)`` (px of the data) follow ``index``.
    """
    L = ctx.source.image_size
    box = L if box is None else min(box, L)
    _, freqs = half_plane_query(box)
    acc = BackprojectionSums.zeros(box)
    origin = None if origin_px is None else origin_px.double() * (box / L)
    for rows, Y, C in _full_size_batches(ctx, max(1, batch // 4), index, noise_power, box):
        acc.add(Y, freqs, rotation[rows], C, None if origin is None else origin[rows])
        particles_done(ctx, "full-size reconstruction", rows.stop, len(rotation))
    return acc
