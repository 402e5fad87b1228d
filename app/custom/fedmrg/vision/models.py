"""Vision models of the second system: a frozen backbone plus what trains and travels.

Methods (``method``), one model class per task kind:

- ``prompt_gen`` (the system): :class:`~fedmrg.vision.generator.PromptGenerator` writes K prompt tokens per image;
  backbone frozen; trained: generator (with its task embedding) + head (ViT) or mask decoder (SAM);
- ``vpt``: K static prompt tokens (:class:`~fedmrg.vision.generator.StaticPrompts`) in the same place; trained: the
  prompts + head / mask decoder;
- ``full_ft``: no prompts, the whole backbone and the head / mask decoder train;
- ``cnn``: a MONAI network trained from scratch (``DenseNet`` classifier, ``UNet`` segmenter).

Where the prompt goes:

- ViT (:class:`PromptedViTClassifier`): ``[CLS, P_1..P_K, patch_1..patch_N]`` enters the frozen encoder layers
  (VPT-shallow position: after CLS, prompts without position embedding); the head reads the final CLS token.
  The generator attends to the image's patch embeddings (the backbone's patch embedding plus its position embedding).
- SAM (:class:`PromptedSamSegmenter`): SAM's image encoder uses windowed attention on a 2D grid, where extra tokens
  have no place; the prompt tokens join the mask decoder's token sequence as sparse prompt embeddings (where SAM puts
  its point / box prompts), the mask decoder trains. The generator attends to the patch embeddings of the image
  encoder (``patch_embed`` plus its absolute position embedding), projected to the mask decoder's width.

Frozen means ``requires_grad=False`` and eval mode (no dropout), kept in eval mode by :meth:`train`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fedmrg.vision.generator import PromptGenerator, StaticPrompts

Method = Literal["prompt_gen", "vpt", "full_ft", "cnn"]
METHODS: tuple[str, ...] = ("prompt_gen", "vpt", "full_ft", "cnn")


def _make_prompter(method: str, num_prompts: int, dim: int, kv_dim: int, out_dim: int, heads: int) -> nn.Module | None:
    if method == "prompt_gen":
        return PromptGenerator(num_prompts, dim, kv_dim=kv_dim, out_dim=out_dim, num_heads=heads)
    if method == "vpt":
        return StaticPrompts(num_prompts, out_dim)
    if method in ("full_ft", "cnn"):
        return None
    raise ValueError(f"unknown `method` {method!r}; choose one of {list(METHODS)}")


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()


class VisionModel(nn.Module):
    """Common part: which parameters train (and travel), and the trained share of the backbone."""

    backbone: nn.Module
    frozen_backbone: bool

    def train(self, mode: bool = True) -> VisionModel:
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()
        return self

    def trainable_names(self) -> list[str]:
        """Sorted names of the parameters that train (= the shared keys of the federated state)."""
        return sorted(n for n, p in self.named_parameters() if p.requires_grad)

    def share_report(self) -> dict[str, float]:
        """``trained_params``, ``backbone_params`` and ``trained_share`` (trained / backbone parameters)."""
        trained = sum(p.numel() for p in self.parameters() if p.requires_grad)
        backbone = sum(p.numel() for p in self.backbone.parameters())
        return {
            "trained_params": float(trained),
            "backbone_params": float(backbone),
            "trained_share": trained / backbone if backbone else float("nan"),
        }


class PromptedViTClassifier(VisionModel):
    """Image classifier on a ``transformers`` ``ViTModel`` with generated (or static) prompts.

    Args:
        vit: the backbone (``ViTModel``); its ``image_size`` fixes the input size.
        num_classes: C.
        method: see the module docstring (``prompt_gen``, ``vpt``, ``full_ft``).
        num_prompts: K.
        generator_heads: attention heads of the generator.

    ``forward(pixel_values (B, 3, H, W) float) -> logits (B, C)``.
    """

    def __init__(
        self,
        vit: nn.Module,
        num_classes: int,
        method: str = "prompt_gen",
        num_prompts: int = 8,
        generator_heads: int = 4,
    ) -> None:
        super().__init__()
        if method == "cnn":
            raise ValueError("method `cnn` has no ViT backbone; use CNNClassifier")
        self.backbone = vit
        self.method = method
        d = vit.config.hidden_size
        self.prompter = _make_prompter(method, num_prompts, d, d, d, generator_heads)
        self.head = nn.Linear(d, num_classes)
        self.frozen_backbone = method != "full_ft"
        if self.frozen_backbone:
            _freeze(self.backbone)

    def patch_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, 1 + N, D)``: CLS and patch embeddings with position embeddings added."""
        emb = self.backbone.embeddings
        patches = emb.patch_embeddings(pixel_values)
        cls = emb.cls_token.expand(patches.shape[0], -1, -1)
        x = torch.cat([cls, patches], dim=1)
        if x.shape[1] != emb.position_embeddings.shape[1]:
            raise ValueError(
                f"image gives {x.shape[1] - 1} patches, the backbone expects "
                f"{emb.position_embeddings.shape[1] - 1}: resize images to {self.backbone.config.image_size}"
            )
        return emb.dropout(x + emb.position_embeddings)

    def prompts(self, pixel_values: torch.Tensor) -> torch.Tensor | None:
        """``(B, K, D)`` prompt tokens of each image, or None without prompts."""
        if self.prompter is None:
            return None
        return self.prompter(self.patch_tokens(pixel_values)[:, 1:])

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_tokens(pixel_values)
        if self.prompter is not None:
            x = torch.cat([x[:, :1], self.prompter(x[:, 1:]), x[:, 1:]], dim=1)
        layers = getattr(self.backbone, "layers", None)
        if layers is None:  # transformers < 5: ViTModel.encoder.layer
            layers = self.backbone.encoder.layer
        for layer in layers:
            out = layer(x)
            x = out[0] if isinstance(out, tuple) else out
        x = self.backbone.layernorm(x)
        return self.head(x[:, 0])


class PromptedSamSegmenter(VisionModel):
    """Binary segmenter on a ``transformers`` ``SamModel`` whose mask decoder reads the generated prompt tokens.

    Args:
        sam: the backbone (``SamModel``); its vision ``image_size`` fixes the input size.
        method: ``prompt_gen``, ``vpt`` or ``full_ft`` (no prompt tokens; image encoder trains too).
        num_prompts: K.
        generator_heads: attention heads of the generator.

    ``forward(pixel_values (B, 3, H, W)) -> mask logits (B, 1, H, W)`` (the decoder's ``4h x 4w`` single-mask output,
    ``h = H / patch``, upsampled bilinearly).
    """

    def __init__(
        self, sam: nn.Module, method: str = "prompt_gen", num_prompts: int = 8, generator_heads: int = 4
    ) -> None:
        super().__init__()
        if method == "cnn":
            raise ValueError("method `cnn` has no SAM backbone; use CNNSegmenter")
        self.backbone = sam
        self.method = method
        dv = sam.config.vision_config.hidden_size
        dp = sam.config.mask_decoder_config.hidden_size
        self.prompter = _make_prompter(method, num_prompts, dp, dv, dp, generator_heads)
        self.frozen_backbone = method != "full_ft"
        if self.frozen_backbone:
            _freeze(self.backbone)
            for p in self.backbone.mask_decoder.parameters():
                p.requires_grad_(True)

    def train(self, mode: bool = True) -> PromptedSamSegmenter:
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.mask_decoder.train(mode)
        return self

    def share_report(self) -> dict[str, float]:
        """As :meth:`VisionModel.share_report`; the backbone count includes SAM's mask decoder (it trains)."""
        return super().share_report()

    def _encode(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ve = self.backbone.vision_encoder
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_backbone):
            patches = ve.patch_embed(pixel_values)
            if ve.pos_embed is not None:
                patches = patches + ve.pos_embed
            h = patches
            for layer in ve.layers:
                out = layer(h)
                h = out[0] if isinstance(out, tuple) else out
            image_embeddings = ve.neck(h)
        return patches.flatten(1, 2), image_embeddings

    def prompts(self, pixel_values: torch.Tensor) -> torch.Tensor | None:
        """``(B, K, D_decoder)`` prompt tokens of each image, or None without prompts."""
        if self.prompter is None:
            return None
        return self.prompter(self._encode(pixel_values)[0])

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        sam = self.backbone
        patches, image_embeddings = self._encode(pixel_values)
        b, _, h, w = image_embeddings.shape
        sparse = self.prompter(patches).unsqueeze(1) if self.prompter is not None else None
        dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(b, -1, h, w)
        pos = sam.get_image_wide_positional_embeddings().expand(b, -1, -1, -1)
        masks, _ = sam.mask_decoder(
            image_embeddings=image_embeddings,
            image_positional_embeddings=pos,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        logits = masks[:, 0]  # (B, 1, 4h, 4w)
        return F.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)


class CNNClassifier(VisionModel):
    """MONAI ``DenseNet`` (2D, random init) trained whole: the CNN-under-FedAvg baseline. ``(B,3,H,W) -> (B,C)``.

    ``arch="densenet121"`` is MONAI's ``DenseNet121`` (7.0 M parameters); ``"densenet_small"`` (default, 0.46 M) the
    same family with growth rate 16 and blocks (4, 8, 12), sized for CPU runs.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, arch: str = "densenet_small") -> None:
        super().__init__()
        from monai.networks.nets import DenseNet, DenseNet121

        if arch == "densenet121":
            self.backbone = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes)
        elif arch == "densenet_small":
            self.backbone = DenseNet(
                spatial_dims=2,
                in_channels=in_channels,
                out_channels=num_classes,
                init_features=32,
                growth_rate=16,
                block_config=(4, 8, 12),
            )
        else:
            raise ValueError(f"unknown CNN `arch` {arch!r}; choose densenet121 or densenet_small")
        self.method = "cnn"
        self.frozen_backbone = False

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.backbone(pixel_values)


class CNNSegmenter(VisionModel):
    """MONAI ``UNet`` (2D, channels 16-128, random init): the CNN-under-FedAvg baseline. ``(B,3,H,W) -> (B,1,H,W)``."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        self.backbone = UNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=1,
            channels=(16, 32, 64, 128),
            strides=(2, 2, 2),
            num_res_units=1,
        )
        self.method = "cnn"
        self.frozen_backbone = False

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.backbone(pixel_values)
