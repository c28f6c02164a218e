"""The cryoAI encoder: Gaussian filter bank → VGG-like CNN → rotation (6D) and shift heads."""

from __future__ import annotations

import os
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from cryoforge.ops.phase_flip import phase_flipped_images
from cryoforge.ops.rotations import sixd_to_matrix
from cryoforge.options import Options
from cryoforge.roles import Encoder
from cryoforge.types import BuildContext, CTFParams, Pose


def gaussian_bank_1d(sigmas_px: list[float], size: int) -> torch.Tensor:
    """``(len(sigmas), size)`` normalised 1D Gaussians (σ in pixels, centred at ``size // 2``)."""
    r = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.stack([torch.exp(-(r**2) / (2 * s * s)) for s in sigmas_px])
    return g / g.sum(-1, keepdim=True)


def gaussian_band_matrices(sigmas_px: list[float], size: int, image_size: int) -> torch.Tensor:
    """``(F, L, L)`` banded matrices ``T_f[i, j] = g_f(j − i)`` of the ``(F, size)`` 1D Gaussians.

    A normalised 2D Gaussian is the product of two normalised 1D ones, so filtering an image ``X``
    by it with zero padding is ``T_f X T_fᵀ`` (:func:`filtered_by_bank`): two small matrix products.
    On a CPU (one thread, per image) they take 0.014 instead of 0.035 ms at L=32 (the 11×11
    convolution was 10 % of a demo encoder step in fp32), 0.12 instead of 0.16 ms at 64, the same
    at 128, and 1.4× the convolution's time at 256, where the bank is a small part of the encoder.
    """
    g = gaussian_bank_1d(sigmas_px, size)
    offset = torch.arange(image_size)[None, :] - torch.arange(image_size)[:, None] + size // 2
    inside = (offset >= 0) & (offset < size)
    return torch.where(inside, g[:, offset.clamp(0, size - 1)], 0.0).float()


def filtered_by_bank(images: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """``(B, L, L)`` images → ``(B, F, L, L)``: each filtered by each 2D Gaussian of the ``(F, L, L)``
    :func:`gaussian_band_matrices`, zero-padded (the 2D convolution, to rounding)."""
    return bank[None] @ images[:, None] @ bank.transpose(1, 2)[None]


def conv_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The convolutions' dtype for ``precision`` on ``device``.

    ``auto`` is bf16 on a CPU with native bf16 arithmetic (AVX512-BF16 or AMX): the encoder's
    forward and backward take 27 instead of 62 ms for 64 images of 32 px on 2 cores, with the same
    pose accuracy (``docs/validation.md``). Elsewhere (older CPUs emulate bf16; GPUs untested
    here) it is fp32.
    """
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


ONEDNN_ISAS_WITHOUT_BF16 = frozenset(
    {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
)
"""oneDNN's ``ONEDNN_MAX_CPU_ISA`` values below AVX512_CORE_BF16: bf16 convolutions are emulated."""


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (torch's own check; False on torch without it).

    The CPU's flags are not enough: a process whose kernels are held below AVX512
    (``ATEN_CPU_CAPABILITY=avx2``, or ``ONEDNN_MAX_CPU_ISA`` below ``AVX512_CORE_BF16``) emulates
    bf16, 16× slower than fp32 on the demo's encoder (``docs/validation.md``), so it counts as a CPU
    without native bf16.
    """
    checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if not any(bool(c()) for c in checks if c is not None):
        return False
    if not torch.backends.cpu.get_cpu_capability().upper().startswith("AVX512"):
        return False
    isa = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return isa not in ONEDNN_ISAS_WITHOUT_BF16


class DoubleConv(nn.Sequential):
    """Two 3×3 convolutions (with optional batch norm) and ReLU, then 2×2 max pooling."""

    def __init__(self, cin: int, cout: int, batch_norm: bool) -> None:
        layers: list[nn.Module] = []
        for c in (cin, cout):
            layers.append(nn.Conv2d(c, cout, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.MaxPool2d(2))
        super().__init__(*layers)


def mlp_head(cin: int, cout: int, hidden: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(cin, h), nn.ReLU(inplace=True)]
        cin = h
    layers.append(nn.Linear(cin, cout))
    return nn.Sequential(*layers)


Width = Annotated[int, Field(ge=1, le=65536)]
"""Channels of a convolution block or units of a hidden layer."""


class VGGEncoder(Encoder):
    """cryoAI's encoder: fixed Gaussian low-pass bank, VGG16-like DoubleConv blocks, two FC heads.

    The image is filtered by ``n_filters`` Gaussians (11×11, σ geometric from 0.1 to 10 px) stacked
    as channels; one ``DoubleConv`` block per entry of ``channels`` halves the resolution; the
    flattened features feed two heads (hidden 512 and 256, ReLU): one to the 6D rotation
    representation (Gram-Schmidt, rows), one to the in-plane shift, returned in Å.
    The defaults follow the paper at L=128; use e.g. ``channels=[16, 32, 64, 64]`` on a CPU.
    """

    name = "vgg"

    class Options(Options):
        # runs written before ``ctf_input`` existed read raw images: their config.json keeps that
        stored_defaults: ClassVar[dict[str, Any]] = {"ctf_input": "raw"}

        channels: list[Width] = Field(
            default_factory=lambda: [64, 128, 256, 512, 512],
            min_length=1,
            description="output channels of each DoubleConv block (each halves the image size)",
        )
        n_filters: int = Field(
            5, ge=1, le=64, description="Gaussian low-pass filters stacked as input channels"
        )
        filter_size: int = Field(
            11, ge=1, le=255, description="side of each Gaussian filter kernel in pixels"
        )
        sigma_min_px: float = Field(0.1, gt=0, description="σ of the narrowest Gaussian filter in pixels")
        sigma_max_px: float = Field(10.0, gt=0, description="σ of the widest Gaussian filter in pixels")
        head_hidden: list[Width] = Field(
            default_factory=lambda: [512, 256], description="hidden widths of the rotation and shift heads"
        )
        batch_norm: bool = Field(True, description="batch normalisation after each convolution")
        predict_shift: bool = Field(True, description="train the shift head (else shifts are 0)")
        ctf_input: Literal["phase_flipped", "raw"] = Field(
            "phase_flipped",
            description="what the encoder reads: each image phase-flipped by its own CTF (the CTF's "
            "contrast reversals undone, so every defocus looks alike), or the raw image",
        )
        precision: Literal["auto", "fp32", "bf16"] = Field(
            "auto",
            description="arithmetic of the convolutions: bf16 (autocast; the heads stay fp32), fp32, "
            "or auto: bf16 on a CPU with native bf16 (AVX512-BF16 / AMX), else fp32",
        )

    def __init__(self, options: Options, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        o = options
        n = o.n_filters
        sig = [o.sigma_min_px * (o.sigma_max_px / o.sigma_min_px) ** (i / max(n - 1, 1)) for i in range(n)]
        bank = gaussian_band_matrices(sig, o.filter_size, ctx.image_size)
        self.register_buffer("filters", bank, persistent=False)
        blocks, cin = [], n
        for c in o.channels:
            blocks.append(DoubleConv(cin, c, o.batch_norm))
            cin = c
        # channels-last convolutions: 1.8x faster forward+backward on CPU (39 vs 71 ms for 64
        # images of 32 px, 2 threads), and the layout tensor cores use on a GPU
        self.features = nn.Sequential(*blocks).to(memory_format=torch.channels_last)
        side = ctx.image_size // 2 ** len(o.channels)
        if side < 1:
            from cryoforge.errors import ConfigError

            raise ConfigError(
                f"encoder.channels: {len(o.channels)} blocks need images of at least "
                f"{2 ** len(o.channels)} px, but the images are {ctx.image_size} px (the box, or "
                "source.downsample_to); use a larger source.downsample_to or fewer encoder.channels"
            )
        feat = cin * side * side
        hidden = tuple(o.head_hidden)
        self.rotation_head = mlp_head(feat, 6, hidden)
        self.shift_head = mlp_head(feat, 2, hidden)
        with torch.no_grad():  # start near zero shift
            self.shift_head[-1].weight.mul_(0.01)
            self.shift_head[-1].bias.zero_()
        self.pixel_size_angstrom = ctx.pixel_size_angstrom

    def prepare(self, images: torch.Tensor, ctf: CTFParams | None) -> torch.Tensor:
        """The images phase-flipped by their CTF (``ctf_input = "phase_flipped"`` and a CTF), else as
        given. On the σ = 2 px demo data the encoder reaches 3.6° instead of 5.5° in the same steps
        (``docs/validation.md``, *The amortized encoder*)."""
        if self.options.ctf_input == "raw" or ctf is None:
            return images
        return phase_flipped_images(images, lambda freqs: ctf.values_at(freqs, self.ctx.pixel_size_angstrom))

    def forward(self, images: torch.Tensor) -> Pose:
        dtype = conv_dtype(self.options.precision, images.device)
        L = self.filters.shape[-1]
        if tuple(images.shape[-2:]) != (L, L):
            raise ValueError(f"the encoder was built for {L}-px images, got {tuple(images.shape[-2:])}")
        # the fixed filters in fp32 whatever autocast surrounds the encoder (train.amp on a GPU)
        with torch.autocast(images.device.type, enabled=False):
            x = filtered_by_bank(images.to(self.filters.dtype), self.filters)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            x = self.features(x.contiguous(memory_format=torch.channels_last)).flatten(1)
        x = x.float()
        rot = sixd_to_matrix(self.rotation_head(x))
        shift_px = self.shift_head(x)
        if not self.options.predict_shift:
            shift_px = shift_px * 0
        return Pose(rot, shift_px * self.pixel_size_angstrom)
