"""Translations in the pose search: the shift grid, the split score, and RELION's own shifted projections."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cryoforge.engine.search_scoring import global_iteration, map_centre_px, recentred_origins
from cryoforge.io.star import read_star
from cryoforge.ops.fft import fourier_to_volume, rfft2_images, volume_to_fourier
from cryoforge.ops.grids import half_plane_query
from cryoforge.ops.projection import project_real_space
from cryoforge.ops.search import (
    pair_cross,
    pair_cross_batched,
    pair_power,
    pair_power_batched,
    shift_grid_px,
    so3_grid,
)
from cryoforge.ops.shift import translate_images


def test_shift_grid_is_a_disc_of_steps_with_zero_first():
    d = shift_grid_px(3.0, 1.0)
    assert torch.equal(d[0], torch.zeros(2, dtype=d.dtype))
    assert d.norm(dim=1).max() <= 3.0 + 1e-9
    assert len(d) == sum(1 for x in range(-3, 4) for y in range(-3, 4) if x * x + y * y <= 9)  # 29
    assert len(shift_grid_px(1.5, 1.0)) == 9  # the 3 x 3 local grid
    assert len(shift_grid_px(0.0, 1.0)) == 1


def test_split_scores_equal_direct_squared_errors():
    """``power − 2 · cross`` is ``‖Y − C P‖² − ‖Y‖²``, for shared and per-image candidates, CTF or not."""
    g = torch.Generator().manual_seed(1)
    Y = torch.randn(5, 7, dtype=torch.complex64, generator=g)
    C = torch.randn(5, 7, generator=g)
    P = torch.randn(4, 7, dtype=torch.complex64, generator=g)
    Pk = torch.randn(5, 3, 7, dtype=torch.complex64, generator=g)  # each image its own 3 candidates
    for c in (C, None):
        w = torch.ones(5, 7) if c is None else c
        direct = (Y[:, None] - w[:, None] * P[None]).abs().pow(2).sum(-1) - Y.abs().pow(2).sum(
            -1, keepdim=True
        )
        split = pair_power(c, P, len(Y)) - 2 * pair_cross(Y, c, P)
        assert torch.allclose(split, direct, atol=1e-4)
        direct_k = (Y[:, None] - w[:, None] * Pk).abs().pow(2).sum(-1) - Y.abs().pow(2).sum(-1, keepdim=True)
        split_k = pair_power_batched(c, Pk) - 2 * pair_cross_batched(Y, c, Pk)
        assert torch.allclose(split_k, direct_k, atol=1e-4)


def test_recentred_origins_move_the_map_and_keep_the_images():
    """A map translated by c and seen at origin o gives the image of the centred map at the new origin."""
    L = 24
    r = torch.arange(L, dtype=torch.float64) - L // 2
    z, y, x = torch.meshgrid(r, r, r, indexing="ij")

    def blob(cx: float, cy: float, cz: float) -> torch.Tensor:
        return torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / 8)

    vol = blob(0, 0, 0) + 0.7 * blob(3, 1, -2) + 0.5 * blob(-2, 3, 1)  # asymmetric, smooth
    moved = torch.roll(vol, shifts=(1, -3, 2), dims=(0, 1, 2))  # [z, y, x] rolled by (z, y, x) = (1, −3, 2)
    c = torch.tensor([2.0, -3.0, 1.0], dtype=torch.float64)  # the same move as (x, y, z)
    rot = so3_grid(12, 4)[[5, 17, 30]]
    origin = torch.tensor([[1.0, 2.0], [-2.0, 0.5], [0.0, 0.0]], dtype=torch.float64)
    seen = translate_images(project_real_space(moved, rot), -origin)  # a particle sits at −origin
    centred = translate_images(project_real_space(vol, rot), -recentred_origins(origin, rot, c))
    peak = float(seen.abs().max())
    assert (seen - centred).abs().max() < 0.01 * peak  # interpolation only
    wrong = translate_images(project_real_space(vol, rot), -(origin + (rot @ c)[..., :2]))
    assert (seen - wrong).abs().max() > 0.5 * peak  # the opposite sign is far off
    assert torch.allclose(map_centre_px(moved) - map_centre_px(vol), c, atol=1e-6)


@pytest.fixture(scope="module")
def ribosome_64(shared_data: Path) -> torch.Tensor:
    """The 70S map Fourier-cropped to 64³ (frequencies −32…31, scaled by (64/65)³), as its README says."""
    vol = torch.from_numpy(np.load(shared_data / "relion_project" / "clean70SRibosome_vol.npy"))
    spec = volume_to_fourier(vol) * 65
    c = 65 // 2
    crop = spec[c - 32 : c + 32, c - 32 : c + 32, c - 32 : c + 32] * (64 / 65) ** 3
    return fourier_to_volume(crop / 64)


def test_search_finds_relion_origins_sign_included(shared_data: Path, ribosome_64: torch.Tensor):
    """RELION's shifted projections, searched over rotations × shifts within ±14 px: the star's origins."""
    star = shared_data / "relion_project" / "rln_proj_64_shifted.star"
    table = read_star(star)
    from cryoforge.io.mrc import open_stack

    images = torch.from_numpy(np.asarray(open_stack(star.with_suffix(".mrcs"))[:], dtype=np.float64))
    L = images.shape[-1]
    flat, freqs = half_plane_query(L)
    sp = SimpleNamespace(
        Y=rfft2_images(images).reshape(len(images), -1)[:, flat].to(torch.complex64),
        freqs=freqs,
        radius_px=freqs.norm(dim=1) * L,
        size=L,
        ctf=lambda sl: None,
    )
    offsets = shift_grid_px(15.0, 1.0)
    assert offsets.abs().max() >= 14
    _, _, _, origins = global_iteration(sp, ribosome_64, so3_grid(300, 24), 12.0, 1, 100, None, offsets)
    want = torch.as_tensor(table.shifts_angstrom) / float(table.pixel_size_angstrom)
    assert want.abs().max() >= 5  # the set is really off-centre
    assert (origins[:, 0] - want).abs().max() <= 0.5, (origins[:, 0], want)
    assert math.isfinite(float(origins.sum()))


def test_simulated_shifts_move_the_particle_out_of_the_box_without_wrapping():
    """``pad = 2``: an origin of −10 px moves the particle 10 px right and nothing comes in from the left."""
    from cryoforge.simulation.simulate import simulate_images

    L = 32
    r = torch.arange(L, dtype=torch.float64) - L // 2
    z, y, x = torch.meshgrid(r, r, r, indexing="ij")
    vol = torch.exp(-((x - 9) ** 2 + y**2 + z**2) / 4) + torch.exp(-(x**2 + (y - 3) ** 2 + z**2) / 6)
    eye = torch.eye(3, dtype=torch.float64)[None]
    centred = simulate_images(vol, eye, torch.zeros(1, 2), None, 1.0, pad=2)[0]
    moved = simulate_images(vol, eye, torch.tensor([[-10.0, 0.0]]), None, 1.0, pad=2)[0]
    wrapped = simulate_images(vol, eye, torch.tensor([[-10.0, 0.0]]), None, 1.0, pad=1)[0]
    peak = float(centred.abs().max())
    # both paths agree where nothing leaves the box, and pad = 1 is the periodic translation
    assert torch.allclose(
        centred, simulate_images(vol, eye, torch.zeros(1, 2), None, 1.0)[0], atol=1e-4 * peak
    )
    assert torch.allclose(moved[:, 10:], centred[:, :-10], atol=1e-3 * peak)
    assert moved[:, :8].abs().max() < 1e-3 * peak  # the blob at x = +9 left the box
    assert torch.allclose(wrapped, torch.roll(centred, 10, dims=1), atol=1e-3 * peak)
    assert wrapped[:, :8].abs().max() > 0.3 * peak  # ... and wrapped round without padding


def test_shift_errors_remove_one_global_translation_of_the_map():
    """Origins that differ only by a moved map score 0 px; per-particle errors remain as they are."""
    from cryoforge.metrics.poses import pose_errors, shift_errors_px
    from cryoforge.ops.rotations import random_rotations

    g = torch.Generator().manual_seed(4)
    R = random_rotations(500, g).double()
    true = torch.randn(500, 2, generator=g, dtype=torch.float64) * 6.0  # Å
    T = torch.tensor([1.5, -2.0, 0.7], dtype=torch.float64)  # px
    moved = true + (R[:, :2, :] @ T) * 3.0  # the same particles seen in a map moved by T, at 3 Å/px
    err, fitted = shift_errors_px(R, moved, true, 3.0)
    assert torch.allclose(fitted, T, atol=1e-9) and err.max() < 1e-9
    kick = torch.zeros(500, 2, dtype=torch.float64)
    kick[::5, 0] = 3.0  # every fifth particle 1 px off in x
    err, _ = shift_errors_px(R, moved + kick, true, 3.0, translation_px=T)
    assert torch.allclose(err[::5], torch.ones(100, dtype=torch.float64)) and err[1::5].max() < 1e-9
    pe = pose_errors(R, R, moved + kick, true, 3.0)
    assert pe["trans_median_px"] < 0.05 and 0.5 < pe["trans_p90_px"] <= 1.05
    assert pe["trans_mse_px2"] == pytest.approx(0.2, abs=0.02)


def test_initial_origins_input_reads_the_files_origins_or_says_it_has_none():
    """``initial_origins = "input"``: the run's particles' origins in px; a clear error without any."""
    from cryoforge.engine.search import _input_origins_px
    from cryoforge.errors import ConfigError
    from cryoforge.types import Pose

    shifts = torch.tensor([[3.0, -6.0], [0.0, 1.5], [9.0, 9.0]])  # Å
    poses = Pose(torch.eye(3).expand(3, 3, 3), shifts)
    ctx = SimpleNamespace(source=SimpleNamespace(poses=poses), index=np.array([2, 0]))
    px = torch.tensor([3.0, 1.5], dtype=torch.float64)
    got = _input_origins_px(ctx, px)
    assert torch.allclose(got, torch.tensor([[3.0, 3.0], [2.0, -4.0]], dtype=torch.float64))
    with pytest.raises(ConfigError, match="initial_origins"):
        _input_origins_px(SimpleNamespace(source=SimpleNamespace(poses=None), index=np.arange(2)), px)
