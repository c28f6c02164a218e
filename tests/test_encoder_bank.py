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
