"""Visual encoder: a transformers ``ResNetModel`` that turns images into patch features and a pooled vector.

Paper 3.1.2 / PromptMRG: ResNet-101 without its classifier gives 7 x 7 x 2048 patch features at 224 px plus the
global-average-pooled 2048-d vector. The architecture comes from a ``ResNetConfig`` preset (random weights) or from
a local Hugging Face directory (``from_pretrained``); no weights are ever downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import ResNetConfig, ResNetModel

from fedmrg.errors import ConfigError
from fedmrg.report.config import MIN_IMAGE_SIZE, EncoderConfig

#: ``ResNetConfig`` arguments of each preset (torchvision's ResNet-18/50/101 layouts; "resnet-tiny" for tests).
ENCODER_PRESETS: dict[str, dict] = {
    "resnet-tiny": {
        "embedding_size": 8,
        "hidden_sizes": [8, 16, 16, 32],
        "depths": [1, 1, 1, 1],
        "layer_type": "basic",
    },
    "resnet-18": {
        "embedding_size": 64,
        "hidden_sizes": [64, 128, 256, 512],
        "depths": [2, 2, 2, 2],
        "layer_type": "basic",
    },
    "resnet-50": {
        "embedding_size": 64,
        "hidden_sizes": [256, 512, 1024, 2048],
        "depths": [3, 4, 6, 3],
        "layer_type": "bottleneck",
    },
    "resnet-101": {
        "embedding_size": 64,
        "hidden_sizes": [256, 512, 1024, 2048],
        "depths": [3, 4, 23, 3],
        "layer_type": "bottleneck",
    },
}


@dataclass
class VisualFeatures:
    """Encoder output.

    Attributes:
        patches: (B, N, C) float, N = (H / 32) * (W / 32) patch features, C = the last stage's width.
        pooled: (B, C) float, global average of the patch features (not normalised).
    """

    patches: torch.Tensor
    pooled: torch.Tensor


def check_images(images: torch.Tensor, *, num_channels: int = 3, min_size: int = MIN_IMAGE_SIZE) -> None:
    """Raise ValueError unless ``images`` is a float tensor of shape (B, num_channels, H, W) with H, W >= min_size."""
    expected = f"expected images of shape (B, {num_channels}, H, W), floating dtype, H and W >= {min_size}"
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{expected}; got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != num_channels:
        raise ValueError(f"{expected}; got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{expected}; got dtype {images.dtype}")
    if min(images.shape[2:]) < min_size:
        raise ValueError(f"{expected}; got shape {tuple(images.shape)} (too small)")
    if images.shape[0] == 0:
        raise ValueError(f"{expected}; got an empty batch")


def build_resnet(config: EncoderConfig) -> ResNetModel:
    """``ResNetModel`` from ``config.path`` (local HF directory) or, when None, from ``config.preset`` (random init)."""
    if config.path is None:
        if config.preset not in ENCODER_PRESETS:
            raise ConfigError(f"`encoder.preset` must be one of {list(ENCODER_PRESETS)}, got {config.preset!r}")
        return ResNetModel(ResNetConfig(num_channels=3, **ENCODER_PRESETS[config.preset]))
    path = Path(config.path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"`encoder.path`: {path} is not a Hugging Face model directory (no config.json)")
    try:
        return ResNetModel.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise ConfigError(f"`encoder.path`: cannot load a ResNet from {path}: {e}") from e


class VisualEncoder(nn.Module):
    """ResNet backbone returning patch features (B, N, C) and pooled features (B, C).

    Args:
        config: encoder section of :class:`~fedmrg.report.config.FedMRGConfig`.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.backbone = build_resnet(config)
        self.num_channels: int = self.backbone.config.num_channels

    @property
    def out_dim(self) -> int:
        """C, the width of the patch and pooled features."""
        return int(self.backbone.config.hidden_sizes[-1])

    def forward(self, images: torch.Tensor) -> VisualFeatures:
        """Encode ``images`` (B, 3, H, W) float (normalised by the data pipeline) into :class:`VisualFeatures`."""
        check_images(images, num_channels=self.num_channels)
        weight = next(self.backbone.parameters())
        out = self.backbone(pixel_values=images.to(device=weight.device, dtype=weight.dtype))
        patches = out.last_hidden_state.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h*w, C)
        return VisualFeatures(patches=patches, pooled=out.pooler_output.flatten(1))
