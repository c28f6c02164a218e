"""Small building blocks shared by the volume representations."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


class SineLayer(nn.Module):
    """``sin(ω0 · (W x + b))`` with SIREN initialisation (Sitzmann et al. 2020)."""

    def __init__(self, in_features: int, out_features: int, omega_0: float, first: bool) -> None:
        super().__init__()
        self.omega_0 = omega_0
        self.linear = nn.Linear(in_features, out_features)
        bound = 1 / in_features if first else math.sqrt(6 / in_features) / omega_0
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.omega_0 * self.linear(x))


class Siren(nn.Module):
    """A SIREN: a first sine layer, ``hidden_layers`` sine layers of width ``hidden_dim``, linear out.

    Parameters
    ----------
    hidden_layers
        Number of ``hidden_dim → hidden_dim`` sine layers after the first one.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_dim: int,
        hidden_layers: int,
        omega_0: float,
        omega_hidden: float = 30.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [SineLayer(in_features, hidden_dim, omega_0, first=True)]
        layers += [SineLayer(hidden_dim, hidden_dim, omega_hidden, first=False) for _ in range(hidden_layers)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(hidden_dim, out_features)
        bound = math.sqrt(6 / hidden_dim) / omega_hidden
        with torch.no_grad():
            self.out.weight.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


def relu_mlp(in_features: int, out_features: int, hidden_dim: int, hidden_layers: int) -> nn.Sequential:
    """Linear–ReLU stack with ``hidden_layers`` hidden→hidden layers after the first."""
    layers: list[nn.Module] = [nn.Linear(in_features, hidden_dim), nn.ReLU()]
    for _ in range(hidden_layers):
        layers += [nn.Linear(hidden_dim, hidden_dim), nn.ReLU()]
    layers.append(nn.Linear(hidden_dim, out_features))
    return nn.Sequential(*layers)


def hermitian_query(fn: Callable[[torch.Tensor], torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
    """Evaluate a real→(re, im) field so that the result is Hermitian by construction.

    Each coordinate is mapped to a canonical half-space (``kx > 0``, or ``kx = 0, ky > 0``, or
    ``kx = ky = 0, kz ≥ 0``); ``fn`` is evaluated there and conjugated for the other half.
    So ``V(-k) = conj(V(k))`` exactly and ``V(0)`` is real.

    Parameters
    ----------
    fn
        Maps ``(N, 3)`` coordinates to ``(N, 2)`` (real, imaginary).
    coords
        ``(..., 3)`` frequencies in cycles/pixel.

    Returns
    -------
    ``(...)`` complex values.
    """
    kx, ky, kz = coords[..., 0], coords[..., 1], coords[..., 2]
    flip = (kx < 0) | ((kx == 0) & ((ky < 0) | ((ky == 0) & (kz < 0))))
    canon = torch.where(flip.unsqueeze(-1), -coords, coords)
    out = fn(canon.reshape(-1, 3)).reshape(*coords.shape[:-1], 2).float()
    re, im = out[..., 0], out[..., 1]
    im = torch.where(flip, -im, im)
    im = torch.where((kx == 0) & (ky == 0) & (kz == 0), torch.zeros_like(im), im)
    return torch.complex(re, im)
