"""The model, its optimizer and its device, from a resolved configuration."""

from __future__ import annotations

from collections.abc import Callable

import torch

from cryoforge.config import RunConfig
from cryoforge.errors import ConfigError
from cryoforge.pipeline import Pipeline
from cryoforge.registry import Registry
from cryoforge.types import BuildContext


def build_pipeline(config: RunConfig, registry: Registry, ctx: BuildContext) -> Pipeline:
    """The configured encoder (none with ``train.gt_poses``), volume, imaging model and loss."""
    encoder = None
    if not config.train.gt_poses:
        encoder = registry.build("encoder", config.encoder.name, config.encoder.options, ctx)
    volume = registry.build("volume", config.volume.name, config.volume.options, ctx)
    imaging = registry.build("imaging", config.imaging.name, config.imaging.options, ctx)
    loss = registry.build("loss", config.loss.name, config.loss.options, ctx)
    return Pipeline(encoder, volume, imaging, loss)


def optimizer_factory(config: RunConfig) -> Callable[[Pipeline], torch.optim.Optimizer]:
    """``make(pipeline)``: Adam (AMSGrad) with the volume's, the encoder's and the rest's rates."""
    tc = config.train

    def make(pipeline: Pipeline) -> torch.optim.Optimizer:
        lr_volume = tc.lr_volume or type(pipeline.volume).recommended_lr
        groups = [{"params": list(pipeline.volume.parameters()), "lr": lr_volume}]
        if pipeline.encoder is not None:
            groups.append({"params": list(pipeline.encoder.parameters()), "lr": tc.lr_encoder})
        extra = [p for m in (pipeline.imaging, pipeline.loss) for p in m.parameters()]
        if extra:
            groups.append({"params": extra, "lr": lr_volume})
        return torch.optim.Adam(groups, amsgrad=True)

    return make


def pick_device(name: str) -> torch.device:
    """``train.device`` as a device: ``auto`` is CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} requested but CUDA is not available")
    return torch.device(name)
