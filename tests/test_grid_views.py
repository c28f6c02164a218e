"""Grid-symmetry averaging of inferred poses, the encoder's training augmentations (grid moves,
recentring) and its bf16 convolutions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoforge.encoders.vgg import VGGEncoder, conv_dtype, cpu_has_native_bf16
from cryoforge.engine.grid_views import grid_averaged_poses
from cryoforge.ops.images import GRID_SYMMETRIES_XY, apply_grid_symmetry
from cryoforge.ops.rotations import (
    consensus_rotations,
    geodesic_distance_deg,
    grid_symmetry_pose,
    project_to_rotation,
    random_rotations,
    rotvec_to_matrix,
)
from cryoforge.types import BuildContext, Pose


def _perturb(R: torch.Tensor, deg: float, g: torch.Generator) -> torch.Tensor:
    axis = torch.randn((*R.shape[:-2], 3), generator=g, dtype=R.dtype)
    axis = axis / axis.norm(dim=-1, keepdim=True) * np.deg2rad(deg)
    return R @ rotvec_to_matrix(axis)


def test_project_to_rotation_is_the_nearest_rotation():
    g = torch.Generator().manual_seed(0)
    R = random_rotations(5, g, torch.float64)
    assert torch.allclose(project_to_rotation(3.0 * R), R, atol=1e-12)
    M = R + 0.1 * torch.randn(5, 3, 3, generator=g, dtype=torch.float64)
    P = project_to_rotation(M)
    eye = torch.eye(3, dtype=torch.float64).expand(5, 3, 3)
    assert torch.allclose(P @ P.transpose(-1, -2), eye, atol=1e-10)
    assert torch.allclose(torch.linalg.det(P), torch.ones(5, dtype=torch.float64))
    # no rotation is closer to M than P (Frobenius), among many random ones near it
    others = _perturb(P[None].expand(200, 5, 3, 3), 3.0, g)
    assert bool(((others - M).pow(2).sum((-1, -2)) >= (P - M).pow(2).sum((-1, -2)) - 1e-12).all())


def test_consensus_averages_agreeing_estimates_and_drops_outliers():
    """8 estimates with independent 4° errors: their mean is ~√8 closer; π-flipped ones are left out."""
    g = torch.Generator().manual_seed(1)
    B = 2000
    truth = random_rotations(B, g, torch.float64)
    cands = _perturb(truth[None].expand(8, B, 3, 3), 4.0, g)
    flipped = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64)) @ cands[-2:]
    cands = torch.cat([cands[:-2], flipped])  # two of eight confuse a π symmetry mate
    mean, agree = consensus_rotations(cands, cands[0], max_deg=20.0)
    single = geodesic_distance_deg(cands[1], truth).median()
    err = geodesic_distance_deg(mean, truth).median()
    assert bool(agree[:-2].all()) and not bool(agree[-2:].any())
    assert float(err) < 0.55 * float(single)  # 6 independent + anchor counted twice: ~1/√6.7


def test_grid_averaged_poses_maps_every_copy_back():
    """An encoder that knows the pose of each moved copy exactly returns the truth after averaging."""
    L, B = 12, 6
    g = torch.Generator().manual_seed(2)
    images = torch.randn(B, L, L, generator=g)
    truth = Pose(random_rotations(B, g), torch.randn(B, 2, generator=g))
    table = []
    for A in GRID_SYMMETRIES_XY.values():
        r, t = grid_symmetry_pose(A, truth.rotation, truth.shift_angstrom)
        table.append((apply_grid_symmetry(images, A), r, t))

    class Oracle(torch.nn.Module):
        def forward(self, x):
            for moved, r, t in table:
                if torch.equal(x, moved):
                    return Pose(r, t)
            raise AssertionError("unexpected input")

    class P:
        encoder = Oracle()

        @staticmethod
        def encoder_images(images, ctf):  # what the encoder reads: here, the images as they are
            return images

    out = grid_averaged_poses(P(), images, truth, max_deg=10.0, ctf=None)
    assert float(geodesic_distance_deg(out.rotation, truth.rotation).max()) < 0.05  # float32 arccos near 0
    assert torch.allclose(out.shift_angstrom, truth.shift_angstrom, atol=1e-5)


def test_bf16_convolutions_track_fp32_and_auto_follows_the_cpu():
    enc = VGGEncoder(VGGEncoder.Options(channels=[8, 16], head_hidden=[32]), BuildContext(16, 2.0)).eval()
    x = torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        enc.options.precision = "fp32"
        a = enc(x)
        enc.options.precision = "bf16"
        b = enc(x)
    assert b.rotation.dtype == torch.float32 and b.shift_angstrom.dtype == torch.float32
    assert float(geodesic_distance_deg(a.rotation, b.rotation).max()) < 3.0  # bf16: 8-bit mantissa
    assert not torch.equal(a.rotation, b.rotation)  # it really ran in bf16
    want = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert conv_dtype("auto", torch.device("cpu")) == want
    assert conv_dtype("fp32", torch.device("cpu")) == torch.float32
    assert conv_dtype("auto", torch.device("cuda")) == torch.float32


def test_auto_precision_honours_kernels_held_below_avx512(monkeypatch):
    """A CPU with AVX512-BF16 whose kernels are held to AVX2 emulates bf16 (16× slower): fp32 then."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert cpu_has_native_bf16()
    assert conv_dtype("auto", torch.device("cpu")) == torch.bfloat16
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert not cpu_has_native_bf16()
    assert conv_dtype("auto", torch.device("cpu")) == torch.float32
    assert conv_dtype("bf16", torch.device("cpu")) == torch.bfloat16  # asked for: kept
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert cpu_has_native_bf16()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not cpu_has_native_bf16()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_vgg_backward_in_both_precisions(precision):
    enc = VGGEncoder(
        VGGEncoder.Options(channels=[8, 16], head_hidden=[32], precision=precision), BuildContext(16, 2.0)
    )
    pose = enc(torch.randn(4, 16, 16))
    (pose.rotation.sum() + pose.shift_angstrom.sum()).backward()
    grads = [p.grad for p in enc.features.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() and gr.dtype == torch.float32 for gr in grads)


def test_grid_augmented_training_images_match_projections_at_their_new_poses():
    """Each image moved by a random grid symmetry equals the real-space projection at its new
    pose; shifts move as ``A t``; every one of the 8 moves is drawn."""
    from cryoforge.engine.amortize import grid_augmented
    from tests.test_ops_physics import project_real_space

    L, B = 16, 48
    g = torch.Generator().manual_seed(7)
    z = torch.arange(L) - L // 2
    zz, yy, xx = torch.meshgrid(z, z, z, indexing="ij")
    vol = torch.rand(L, L, L, generator=g) * ((zz**2 + yy**2 + xx**2) < 25)
    R = random_rotations(B, g)
    t = torch.randn(B, 2, generator=g)
    images, moved = grid_augmented(project_real_space(vol, R), Pose(R, t), g)
    assert torch.allclose(images, project_real_space(vol, moved.rotation), atol=1e-4)
    firsts = {tuple(m.flatten().tolist()) for m in (moved.rotation @ R.transpose(-1, -2)).round()}
    assert len(firsts) == 8  # B·R Rᵀ = B: all eight moves were drawn
    for i in range(B):
        A = moved.rotation[i] @ R[i].T
        assert torch.allclose(moved.shift_angstrom[i], A[:2, :2] @ t[i], atol=1e-5)


def test_recentred_training_images_sit_at_their_new_origin():
    """A Gaussian blob at ``−o`` (origin ``o``, RELION's sign) moved by ``recentred`` sits at ``−j``,
    the jitter its target now holds; images not picked are untouched."""
    from cryoforge.engine.amortize import recentred

    L, B, px = 32, 64, 2.0
    g = torch.Generator().manual_seed(11)
    origin_px = 3 * torch.randn(B, 2, generator=g, dtype=torch.float64)
    u = torch.arange(L, dtype=torch.float64) - L // 2
    yy, xx = torch.meshgrid(u, u, indexing="ij")

    def blob(at: torch.Tensor) -> torch.Tensor:
        return torch.exp(
            -((xx - at[:, 0, None, None]) ** 2 + (yy - at[:, 1, None, None]) ** 2) / (2 * 2.0**2)
        )

    R = random_rotations(B, g, torch.float64)
    images, moved = recentred(blob(-origin_px), Pose(R, origin_px * px), 0.5, 0.5 * px, px, g)
    picked = ~torch.isclose(moved.shift_angstrom, origin_px * px).all(-1)
    assert 16 < int(picked.sum()) < 48 and torch.equal(moved.rotation, R)
    assert torch.allclose(images[~picked], blob(-origin_px)[~picked])
    # 1e-4: the periodic shift wraps the tails of blobs that sat up to 7 px off-centre
    assert torch.allclose(images[picked], blob(-moved.shift_angstrom[picked] / px), atol=1e-4)
    assert float((moved.shift_angstrom[picked] / px).std()) < 1.0  # near the centre: σ 0.5 px


def test_second_pass_on_recentred_images_corrects_the_first_origin():
    """A stand-in encoder that reads 60 % of a particle's origin from its centroid: one pass
    leaves 40 % of the origin; the second pass, on the image centred by the first origin, reads 60 %
    of the rest, leaving 16 %. Signs, units (Å) and the sum of the two origins are checked."""
    from types import SimpleNamespace

    from cryoforge.engine.grid_views import infer_poses_grid_averaged

    L, B, px = 32, 10, 1.5
    u = torch.arange(L, dtype=torch.float32) - L // 2
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    origin_px = torch.linspace(-4, 4, B)[:, None] * torch.tensor([[1.0, -0.5]])
    images = torch.exp(
        -((xx + origin_px[:, 0, None, None]) ** 2 + (yy + origin_px[:, 1, None, None]) ** 2) / 8
    )

    class Stand(torch.nn.Module):
        def forward(self, batch):
            w = batch.images.clamp_min(0)
            centroid = (
                torch.stack([(w * xx).sum((-1, -2)), (w * yy).sum((-1, -2))], -1) / w.sum((-1, -2))[:, None]
            )
            rot = torch.eye(3).expand(len(w), 3, 3)
            return SimpleNamespace(pose=Pose(rot, -0.6 * centroid * px))  # the particle sits at −origin

    source = SimpleNamespace(
        read_images=lambda idx: images[torch.as_tensor(idx)].numpy(),
        ctf=None,
        poses=None,
        pixel_size_angstrom=px,
    )
    idx = np.arange(B)
    one = infer_poses_grid_averaged(Stand(), source, idx, 4, torch.device("cpu"), average=False)
    two = infer_poses_grid_averaged(
        Stand(), source, idx, 4, torch.device("cpu"), average=False, recentre=True
    )
    truth = origin_px * px
    assert torch.allclose(one.shift_angstrom, 0.6 * truth, atol=0.02)
    assert torch.allclose(two.shift_angstrom, 0.84 * truth, atol=0.03)

    class Encoder(torch.nn.Module):  # the same reader, as an encoder on images (the infer stage's path)
        def forward(self, imgs):
            return Stand()(SimpleNamespace(images=imgs)).pose

    from cryoforge.engine.batches import encoder_poses

    pipe = SimpleNamespace(encoder=Encoder(), encoder_images=lambda images, ctf: images)
    fast = encoder_poses(pipe, source, idx, 4, torch.device("cpu"), recentre=True)
    assert torch.allclose(fast.shift_angstrom, 0.84 * truth, atol=0.03)


def test_infer_reads_twice_only_for_an_encoder_trained_with_recentring():
    from pathlib import Path

    from cryoforge.config import apply_override, load_config_file
    from cryoforge.engine.infer import trained_recentred
    from cryoforge.plugins import load_registry

    demo = load_config_file(Path(__file__).resolve().parents[1] / "examples" / "demo.toml")
    registry = load_registry([])
    # the shipped default (recentre 0.75, not written in the config) counts: a default run reads twice
    assert trained_recentred(demo, registry)
    assert trained_recentred(apply_override(demo, "schedule.amortize", {"recentre": 0.5}), registry)
    assert not trained_recentred(apply_override(demo, "schedule.amortize", {"recentre": 0.0}), registry)
    assert not trained_recentred(apply_override(demo, "schedule.amortize_steps", 0), registry)


def test_infer_one_pass_flag_reads_each_image_once(tmp_path, monkeypatch):
    """``cryoforge infer --one-pass`` asks for one reading even from a recentre-trained encoder."""
    from click.testing import CliRunner

    import cryoforge.engine.infer as infer_mod
    from cryoforge.cli import cli

    seen = {}

    def fake_infer_run(*args, **kwargs):
        seen.update(kwargs)
        out = tmp_path / "out.star"
        out.write_text("")
        return out

    monkeypatch.setattr(infer_mod, "infer_run", fake_infer_run)
    for flag, expected in (("--one-pass", False), ("--recentre", True)):
        r = CliRunner().invoke(cli, ["infer", str(tmp_path), flag], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        assert seen["recentre"] is expected
