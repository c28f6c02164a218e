"""The encoder's Gaussian filter bank, computed as banded matrix products, against a direct 2D
correlation with zero padding written here in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoforge.encoders.vgg import VGGEncoder, filtered_by_bank, gaussian_band_matrices
from cryoforge.types import BuildContext


def correlate_zero_padded(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``out[y, x] = Σ kernel[dy, dx] · image[y + dy − K//2, x + dx − K//2]``, zero outside."""
    K, L = kernel.shape[0], image.shape[0]
    padded = np.pad(image, K // 2)
    out = np.zeros_like(image)
    for dy in range(K):
        for dx in range(K):
            out += kernel[dy, dx] * padded[dy : dy + L, dx : dx + L]
    return out


@pytest.mark.parametrize(("size", "L"), [(11, 32), (5, 16), (11, 8)])
def test_bank_equals_the_2d_gaussian_correlation(size: int, L: int) -> None:
    sigmas = [0.1, 0.8, 2.5, 10.0]
    rng = np.random.default_rng(0)
    images = rng.standard_normal((3, L, L))
    out = filtered_by_bank(torch.tensor(images, dtype=torch.float32), gaussian_band_matrices(sigmas, size, L))
    assert out.shape == (3, len(sigmas), L, L)
    r = np.arange(size) - size // 2
    for f, s in enumerate(sigmas):
        kernel = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * s * s))
        kernel /= kernel.sum()
        for b in range(3):
            want = correlate_zero_padded(images[b], kernel)
            np.testing.assert_allclose(out[b, f].numpy(), want, atol=2e-6)
    # the narrowest filter is nearly the identity, the widest blurs: the bank is not one filter
    assert float((out[:, 0] - torch.tensor(images, dtype=torch.float32)).abs().max()) < 1e-3
    assert float(out[:, -1].std()) < 0.5 * float(images.std())


def test_an_off_centre_impulse_is_not_wrapped() -> None:
    """Zero padding, as the convolution had: a spot near the edge loses the kernel's outer part."""
    L = 16
    image = torch.zeros(1, L, L)
    image[0, 0, 0] = 1.0
    out = filtered_by_bank(image, gaussian_band_matrices([2.0], 11, L))[0, 0]
    assert float(out[-1, -1]) == 0.0  # nothing wraps round to the far corner
    assert 0.2 < float(out.sum()) < 0.5  # about a quarter of the Gaussian stays in the box


def test_encoder_filters_its_input_with_the_bank() -> None:
    """The encoder's first stage is the bank: a constant image stays constant away from the edge."""
    enc = VGGEncoder(VGGEncoder.Options(channels=[4], head_hidden=[8], n_filters=3), BuildContext(16, 2.0))
    assert enc.filters.shape == (3, 16, 16)
    out = filtered_by_bank(torch.ones(1, 16, 16), enc.filters)
    torch.testing.assert_close(out[0, :, 8, 8], torch.ones(3), atol=1e-4, rtol=0)


@pytest.mark.parametrize(("size", "L"), [(4, 16), (10, 8), (41, 16)])
def test_even_and_oversized_kernels(size: int, L: int) -> None:
    """Even sizes (centred at ``size // 2``) and kernels wider than the image are still the
    zero-padded correlation."""
    rng = np.random.default_rng(1)
    image = rng.standard_normal((L, L))
    bank = gaussian_band_matrices([1.5], size, L)
    out = filtered_by_bank(torch.tensor(image[None], dtype=torch.float32), bank)
    r = np.arange(size) - size // 2
    kernel = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    kernel /= kernel.sum()
    padded = np.pad(image, ((size // 2, size - 1 - size // 2),) * 2)
    want = np.zeros_like(image)
    for dy in range(size):
        for dx in range(size):
            want += kernel[dy, dx] * padded[dy : dy + L, dx : dx + L]
    np.testing.assert_allclose(out[0, 0].numpy(), want, atol=2e-6)


@pytest.mark.parametrize("precision", ["fp32", "auto", "bf16"])
def test_encoder_runs_inside_an_outer_autocast(precision: str) -> None:
    """``train.amp`` wraps the model in autocast: the fixed filters still run in fp32 and the
    convolutions get the dtype they expect (it failed with fp32 convolutions before)."""
    enc = VGGEncoder(
        VGGEncoder.Options(channels=[4, 8], head_hidden=[8], precision=precision), BuildContext(16, 2.0)
    )
    x = torch.randn(3, 16, 16)
    with torch.no_grad():
        plain = enc.eval()(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pose = enc(x)
    assert torch.isfinite(pose.rotation.float()).all()
    # bf16 arithmetic inside: close to the plain result, not equal to noise
    assert float((pose.rotation.float() - plain.rotation).abs().max()) < 0.1


def test_encoder_refuses_images_of_another_size() -> None:
    enc = VGGEncoder(VGGEncoder.Options(channels=[4], head_hidden=[8]), BuildContext(16, 2.0))
    with pytest.raises(ValueError, match="16-px"):
        enc(torch.randn(2, 18, 18))
