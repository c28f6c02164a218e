"""CTF phase flipping of the encoder's images: against a numpy FFT reference, its invariances, and
how runs choose it (new runs flip; runs written before the option existed keep raw images)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cryoforge.config import RunConfig, resolve
from cryoforge.encoders.vgg import VGGEncoder
from cryoforge.engine.portable import load_run_config, with_stored_defaults
from cryoforge.ops.images import GRID_SYMMETRIES_XY, apply_grid_symmetry, rotate_pi
from cryoforge.ops.phase_flip import phase_flipped_images as _flip
from cryoforge.plugins import load_registry
from cryoforge.types import BuildContext, CTFParams

L, PX = 32, 3.0
ROOT_EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def phase_flipped_images(images: torch.Tensor, ctf: CTFParams, px: float) -> torch.Tensor:
    return _flip(images, lambda freqs: ctf.values_at(freqs, px))


def _ctf(n: int, angle_deg: float = 30.0) -> CTFParams:
    """Strongly astigmatic CTFs (1.2 and 1.8 µm), so an x/y mix-up or a wrong angle shows."""
    full = lambda v: torch.full((n,), float(v), dtype=torch.float64)
    return CTFParams(
        defocus_u_angstrom=torch.linspace(12000.0, 18000.0, n, dtype=torch.float64),
        defocus_v_angstrom=torch.linspace(9000.0, 14000.0, n, dtype=torch.float64),
        astigmatism_angle_deg=full(angle_deg),
        voltage_kv=full(300.0),
        cs_mm=full(2.7),
        amplitude_contrast=full(0.1),
        phase_shift_deg=full(0.0),
        bfactor_angstrom2=full(0.0),
    )


def _numpy_ctf_grid(ctf: CTFParams) -> np.ndarray:
    """``(B, L, L)`` CTF on numpy's own unshifted fft2 grid (rows ky, columns kx, cycles/px)."""
    k = np.fft.fftfreq(L)
    kx, ky = np.meshgrid(k, k, indexing="xy")
    freqs = torch.from_numpy(np.stack([kx.ravel(), ky.ravel()], 1))
    return ctf.values_at(freqs, PX).numpy().reshape(-1, L, L), np.hypot(kx, ky) < 0.5  # strictly inside


def test_phase_flip_equals_a_numpy_fft_reference():
    """Image = projection filtered by the CTF; flipped = the projection filtered by |CTF| (inside
    Nyquist), computed with numpy's fft2 on its own grid."""
    rng = np.random.default_rng(0)
    n = 4
    proj = rng.standard_normal((n, L, L))
    ctf = _ctf(n)
    C, inside = _numpy_ctf_grid(ctf)
    spec = np.fft.fft2(np.fft.ifftshift(proj, axes=(-2, -1)))
    image = np.fft.fftshift(np.fft.ifft2(spec * C).real, axes=(-2, -1))
    want = np.fft.fftshift(np.fft.ifft2(spec * np.abs(C) * inside).real, axes=(-2, -1))
    got = phase_flipped_images(torch.from_numpy(image).float(), ctf, PX).double().numpy()
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()
    # and it is not the identity: the raw image differs from the flipped one by a lot
    assert np.abs(image - want).max() > 0.3 * np.abs(want).max()


def test_phase_flip_is_unitary_and_commutes_with_the_pi_view_and_translations():
    g = torch.Generator().manual_seed(1)
    n = 6
    ctf = _ctf(n, angle_deg=0.0)
    noise = torch.randn(n, L, L, generator=g)
    flipped = phase_flipped_images(noise, ctf, PX)
    twice = phase_flipped_images(flipped, ctf, PX)
    # unitary inside Nyquist: flipping twice is the Nyquist-limited image, and the power is kept
    assert torch.allclose(phase_flipped_images(twice, ctf, PX), flipped, atol=1e-5)
    assert float(flipped.pow(2).sum()) == pytest.approx(float(twice.pow(2).sum()), rel=1e-5)
    assert float(flipped.pow(2).mean()) == pytest.approx(1.0, abs=0.25)
    # the π view and integer translations commute with the flip (the CTF is even, shift-invariant)
    assert torch.allclose(phase_flipped_images(rotate_pi(noise), ctf, PX), rotate_pi(flipped), atol=1e-5)
    rolled = torch.roll(noise, (3, -2), (-2, -1))
    moved = torch.roll(flipped, (3, -2), (-2, -1))
    assert torch.allclose(phase_flipped_images(rolled, ctf, PX), moved, atol=1e-5)
    # it is not the identity: many frequencies change sign
    limited = phase_flipped_images(flipped, ctf, PX)
    assert float((flipped - limited).pow(2).sum()) > 0.3 * float(limited.pow(2).sum())
    # a grid move does not commute in general (it moves the CTF's astigmatism too), which is why
    # the encoder's images are prepared before any move; with the astigmatism along x, a mirror in
    # x leaves the CTF unchanged and the two orders agree
    A = ((-1, 0), (0, 1))
    assert A in GRID_SYMMETRIES_XY.values()
    assert torch.allclose(
        phase_flipped_images(apply_grid_symmetry(noise, A), ctf, PX),
        apply_grid_symmetry(flipped, A),
        atol=1e-5,
    )


def test_vgg_reads_phase_flipped_images_by_default():
    ctx = BuildContext(image_size=L, pixel_size_angstrom=PX)
    enc = VGGEncoder(VGGEncoder.Options(channels=[4], head_hidden=[8]), ctx)
    raw = VGGEncoder(VGGEncoder.Options(channels=[4], head_hidden=[8], ctf_input="raw"), ctx)
    images = torch.randn(3, L, L, generator=torch.Generator().manual_seed(2))
    ctf = _ctf(3)
    assert torch.equal(enc.prepare(images, ctf), phase_flipped_images(images, ctf, PX))
    assert enc.prepare(images, None) is images  # data without a CTF: nothing to flip
    assert raw.prepare(images, ctf) is images


def test_runs_written_before_the_option_keep_raw_images(tmp_path):
    """A run's config.json holds every option resolved: one without ``ctf_input`` was trained on
    raw images, and resuming or inferring with it must read raw images; a new run flips."""
    registry = load_registry()
    new = resolve(RunConfig(), registry)
    assert new.encoder.options["ctf_input"] == "phase_flipped"
    old = new.model_dump(mode="json", exclude={"plugins"})
    del old["encoder"]["options"]["ctf_input"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    (tmp_path / "plugins.json").write_text("{}")
    assert load_run_config(tmp_path).encoder.options["ctf_input"] == "raw"
    assert with_stored_defaults(new, registry).encoder.options["ctf_input"] == "phase_flipped"


def test_training_and_inference_feed_the_encoder_only_prepared_images(tmp_path, monkeypatch):
    """Every image the encoder reads (the amortize stage, the subset path's infer stage and
    ``cryoforge infer``) went through its ``prepare`` with a CTF first, once. The spy's ``prepare``
    returns constant images and refuses a constant input (a second flip); the π view, the grid
    moves and recentring keep a constant image constant, so any raw image reaching ``forward``
    shows."""
    from cryoforge.config import apply_override, load_config_file
    from cryoforge.engine.infer import infer_run
    from cryoforge.engine.run import run
    from cryoforge.testing import TINY_MODEL, write_tiny_dataset

    data = write_tiny_dataset(tmp_path / "data", n=130)
    calls = {"prepare": 0, "forward": 0, "raw": 0}
    forward = VGGEncoder.forward

    def constant(x: torch.Tensor) -> bool:
        return torch.allclose(x, torch.full_like(x, 7.0), atol=1e-4)

    def prepare(self, images, ctf):
        assert ctf is not None and len(ctf.defocus_u_angstrom) == len(images)
        assert not constant(images), "an image was prepared twice"
        calls["prepare"] += 1
        return torch.full_like(images, 7.0)

    def spy_forward(self, images):
        calls["forward"] += 1
        calls["raw"] += int(not constant(images))
        return forward(self, images)

    monkeypatch.setattr(VGGEncoder, "prepare", prepare)
    monkeypatch.setattr(VGGEncoder, "forward", spy_forward)
    cfg = load_config_file(ROOT_EXAMPLES / "demo.toml")
    over = {
        **TINY_MODEL,
        "source.path": str(data["star"]),
        "output_dir": str(tmp_path / "run"),
        "schedule.fit_steps": 2,
        "schedule.amortize_steps": 3,
        "schedule.subset": 100,  # the other 30 go through the infer stage (the encoder's poses)
        "schedule.search": {"iterations": 2, "refine_steps_deg": []},
        "schedule.refine": {"refine_steps_deg": [2.0], "fit_steps": 1},
    }
    for k, v in over.items():
        cfg = apply_override(cfg, k, v)
    run(cfg, overwrite=True)
    stages = json.loads((tmp_path / "run" / "metrics.json").read_text())["stage_wall_s"]
    assert "infer" in stages and stages["infer"] > 0  # the infer stage ran
    trained = dict(calls)
    assert trained["prepare"] >= 4 and trained["forward"] >= 4 and trained["raw"] == 0
    infer_run(tmp_path / "run", str(data["star"]), str(tmp_path / "inferred.star"), overwrite=True)
    assert calls["prepare"] > trained["prepare"] and calls["forward"] > trained["forward"]
    assert calls["raw"] == 0


def test_no_flip_where_the_imaging_model_applies_no_ctf():
    """Stacks phase-flipped already are run with ``imaging.apply_ctf = false``: the encoder then
    gets no CTF either (a second flip would bring the contrast reversals back)."""
    from cryoforge.imaging.cryoai import CryoAIImaging
    from cryoforge.losses.l2 import L2Loss
    from cryoforge.pipeline import Pipeline
    from cryoforge.volumes.voxel import VoxelVolume

    ctx = BuildContext(image_size=L, pixel_size_angstrom=PX)
    enc = VGGEncoder(VGGEncoder.Options(channels=[4], head_hidden=[8]), ctx)
    vol = VoxelVolume(VoxelVolume.Options(), ctx)
    images = torch.randn(3, L, L, generator=torch.Generator().manual_seed(3))
    ctf = _ctf(3)
    for apply_ctf, flipped in ((True, True), (False, False)):
        imaging = CryoAIImaging(CryoAIImaging.Options(apply_ctf=apply_ctf), ctx)
        pipe = Pipeline(enc, vol, imaging, L2Loss(L2Loss.Options(), ctx))
        seen = pipe.encoder_images(images, ctf)
        assert torch.equal(seen, phase_flipped_images(images, ctf, PX)) is flipped
        assert (seen is images) is not flipped


def test_amortize_flips_real_and_synthetic_images_in_one_call_when_their_ctfs_match():
    """One ``encoder_images`` call for the step's real and synthetic images; a part without a
    CTF (never both kinds in one source today) is prepared on its own, not silently unflipped."""
    from types import SimpleNamespace

    from cryoforge.engine.amortize import encoder_images

    calls = []

    def prepare(images, ctf):
        calls.append((len(images), None if ctf is None else len(ctf.defocus_u_angstrom)))
        return images + 1.0

    ctx = SimpleNamespace(pipeline=SimpleNamespace(encoder_images=prepare))
    real, syn = torch.zeros(3, 8, 8), torch.zeros(2, 8, 8)
    out = encoder_images(ctx, [(real, _ctf(3)), (syn, _ctf(2))])
    assert calls == [(5, 5)] and out.shape == (5, 8, 8) and bool((out == 1).all())
    calls.clear()
    encoder_images(ctx, [(real, _ctf(3)), (syn, None)])
    assert calls == [(3, 3), (2, None)]
    calls.clear()
    encoder_images(ctx, [(real, None), (syn, None)])
    assert calls == [(5, None)]
