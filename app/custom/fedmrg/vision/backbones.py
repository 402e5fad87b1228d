"""Backbones: frozen ``transformers`` ViT / SAM models loaded from local folders, and small random ones for tests.

A backbone is named by ``"builtin"`` (the project's MAE-pretrained small ViT, :mod:`fedmrg.vision.builtin`) or by a
local folder written by ``save_pretrained`` (``config.json`` + weights), e.g. a user's copy of
``google/vit-base-patch16-224``, ``facebook/sam-vit-base`` or MedSAM. Nothing is downloaded.

- classification needs a ViT: ``model_type`` ``vit`` (``ViTModel``) or ``vit_mae`` (its encoder, as ``ViTModel``);
- segmentation needs a SAM: ``model_type`` ``sam`` (``SamModel``), or a ViT turned into SAM's image encoder by
  :func:`sam_from_vit` (global attention, absolute position embedding, identity neck; prompt encoder and mask decoder
  initialised from ``seed``; the mask decoder trains).

Input normalisation comes from the folder's ``preprocessor_config.json`` (``image_mean`` / ``image_std``) when
present, else 0.5 / 0.5. Images are resized to the backbone's square ``image_size``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from fedmrg.errors import ConfigError


@dataclass(frozen=True)
class Preprocessing:
    """How images enter the backbone: RGB, resized to ``image_size`` x ``image_size``, ``(x/255 - mean) / std``."""

    image_size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def to_json(self) -> dict:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, d: dict) -> Preprocessing:
        return cls(int(d["image_size"]), tuple(d["mean"]), tuple(d["std"]))


def _model_type(path: Path) -> str:
    cfg_file = path / "config.json"
    if not path.is_dir():
        raise ConfigError(
            f"backbone folder {path} does not exist (give a folder written by save_pretrained, or 'builtin')"
        )
    if not cfg_file.is_file():
        raise ConfigError(f"{path}: no config.json; a backbone folder must come from save_pretrained")
    try:
        return str(json.loads(cfg_file.read_text(encoding="utf-8")).get("model_type", ""))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{cfg_file}: not valid JSON: {e}") from e


def _preprocessing(path: Path, image_size: int) -> Preprocessing:
    pp = path / "preprocessor_config.json"
    if pp.is_file():
        d = json.loads(pp.read_text(encoding="utf-8"))
        if "image_mean" in d and "image_std" in d:
            return Preprocessing(image_size, tuple(d["image_mean"]), tuple(d["image_std"]))
    return Preprocessing(image_size)


#: The committed built-in backbone (built by ``scripts/build_vision_backbone.py``, recipe in ``fedmrg.vision.builtin``).
BUILTIN_DIR = Path(__file__).parent / "builtin_backbone"


def builtin_backbone_dir() -> Path:
    """The committed built-in backbone folder; ConfigError with the rebuild command when it is missing."""
    if not (BUILTIN_DIR / "model.safetensors").is_file():
        raise ConfigError(
            f"built-in vision backbone missing in {BUILTIN_DIR}: rebuild it with "
            f"`python scripts/build_vision_backbone.py`"
        )
    return BUILTIN_DIR


def resolve_backbone_dir(backbone: str, kind: str) -> Path:
    """The folder of ``backbone`` (``"builtin"`` or a path); ``kind`` is ``classification`` or ``segmentation``."""
    if backbone == "builtin":
        return builtin_backbone_dir()
    return Path(backbone).expanduser()


def load_vit(path: str | Path) -> tuple[torch.nn.Module, Preprocessing]:
    """A ``ViTModel`` (no pooler) from a local ``vit`` or ``vit_mae`` folder, and its preprocessing."""
    from transformers import ViTConfig, ViTMAEModel, ViTModel

    path = Path(path)
    mt = _model_type(path)
    if mt == "vit":
        vit = ViTModel.from_pretrained(str(path), add_pooling_layer=False)
    elif mt == "vit_mae":
        mae = ViTMAEModel.from_pretrained(str(path))
        c = mae.config
        vit = ViTModel(
            ViTConfig(
                hidden_size=c.hidden_size,
                num_hidden_layers=c.num_hidden_layers,
                num_attention_heads=c.num_attention_heads,
                intermediate_size=c.intermediate_size,
                image_size=c.image_size,
                patch_size=c.patch_size,
                num_channels=c.num_channels,
                layer_norm_eps=c.layer_norm_eps,
                qkv_bias=c.qkv_bias,
            ),
            add_pooling_layer=False,
        )
        missing, unexpected = vit.load_state_dict(mae.state_dict(), strict=False)
        if missing:
            raise ConfigError(f"{path}: vit_mae weights do not fit a ViT: missing {missing[:5]}")
    else:
        raise ConfigError(f"{path}: model_type {mt!r} is not a ViT (need 'vit' or 'vit_mae') for classification")
    vit.eval()
    size = vit.config.image_size
    return vit, _preprocessing(path, size if isinstance(size, int) else size[0])


def load_sam(path: str | Path, seed: int = 0) -> tuple[torch.nn.Module, Preprocessing]:
    """A ``SamModel`` from a local ``sam`` folder, or one built on a ``vit`` / ``vit_mae`` folder (:func:`sam_from_vit`)."""
    from transformers import SamModel

    path = Path(path)
    mt = _model_type(path)
    if mt == "sam":
        sam = SamModel.from_pretrained(str(path))
        pre = _preprocessing(path, int(sam.config.vision_config.image_size))
    elif mt in ("vit", "vit_mae"):
        vit, pre = load_vit(path)
        sam = sam_from_vit(vit, seed=seed)
    else:
        raise ConfigError(f"{path}: model_type {mt!r} is neither SAM nor ViT; segmentation needs one of them")
    sam.eval()
    return sam, pre


def sam_from_vit(vit: torch.nn.Module, *, seed: int = 0, decoder_mlp_dim: int | None = None) -> torch.nn.Module:
    """A ``SamModel`` whose image encoder is ``vit`` (same weights, global attention, identity neck).

    The ViT's CLS token is dropped (SAM has none), its patch position embeddings become SAM's absolute ones, its final
    LayerNorm becomes the neck's last one. Prompt encoder and mask decoder (width = the ViT width) are initialised
    deterministically from ``seed``.
    """
    from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

    c = vit.config
    d, size, patch = c.hidden_size, int(c.image_size), int(c.patch_size)
    heads = 8 if d % 16 == 0 else c.num_attention_heads
    cfg = SamConfig(
        vision_config=SamVisionConfig(
            hidden_size=d,
            output_channels=d,
            num_hidden_layers=c.num_hidden_layers,
            num_attention_heads=c.num_attention_heads,
            image_size=size,
            patch_size=patch,
            layer_norm_eps=c.layer_norm_eps,
            qkv_bias=c.qkv_bias,
            mlp_dim=c.intermediate_size,
            use_abs_pos=True,
            use_rel_pos=False,
            window_size=0,
            global_attn_indexes=[],
            hidden_act=c.hidden_act,
            num_pos_feats=d // 2,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(hidden_size=d, image_size=size, patch_size=patch),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=d, mlp_dim=decoder_mlp_dim or 4 * d, num_attention_heads=heads, iou_head_hidden_dim=d
        ),
    )
    torch.manual_seed(seed)
    sam = SamModel(cfg)
    src = vit.state_dict()
    dst: dict[str, torch.Tensor] = {}
    n = size // patch
    dst["vision_encoder.patch_embed.projection.weight"] = src["embeddings.patch_embeddings.projection.weight"]
    dst["vision_encoder.patch_embed.projection.bias"] = src["embeddings.patch_embeddings.projection.bias"]
    dst["vision_encoder.pos_embed"] = src["embeddings.position_embeddings"][:, 1:].reshape(1, n, n, d)
    for i in range(c.num_hidden_layers):
        s, t = f"layers.{i}.", f"vision_encoder.layers.{i}."
        if s + "attention.q_proj.weight" not in src:
            raise ConfigError("sam_from_vit needs a transformers>=5 ViTModel (layers.N.attention.q_proj)")
        for w in ("weight", "bias"):
            dst[t + f"attn.qkv.{w}"] = torch.cat([src[s + f"attention.{p}_proj.{w}"] for p in "qkv"], 0)
            dst[t + f"attn.proj.{w}"] = src[s + f"attention.o_proj.{w}"]
            dst[t + f"layer_norm1.{w}"] = src[s + f"layernorm_before.{w}"]
            dst[t + f"layer_norm2.{w}"] = src[s + f"layernorm_after.{w}"]
            dst[t + f"mlp.lin1.{w}"] = src[s + f"mlp.fc1.{w}"]
            dst[t + f"mlp.lin2.{w}"] = src[s + f"mlp.fc2.{w}"]
    eye = torch.eye(d)
    dst["vision_encoder.neck.conv1.weight"] = eye.reshape(d, d, 1, 1).clone()
    conv2 = torch.zeros(d, d, 3, 3)
    conv2[:, :, 1, 1] = eye
    dst["vision_encoder.neck.conv2.weight"] = conv2
    dst["vision_encoder.neck.layer_norm2.weight"] = src["layernorm.weight"]
    dst["vision_encoder.neck.layer_norm2.bias"] = src["layernorm.bias"]
    missing, unexpected = sam.load_state_dict(dst, strict=False)
    if unexpected:
        raise ConfigError(f"sam_from_vit: unexpected keys {unexpected[:5]}")
    left = [k for k in missing if k.startswith("vision_encoder.") and "neck.layer_norm1" not in k]
    if left:
        raise ConfigError(f"sam_from_vit: image-encoder weights not mapped: {left[:5]}")
    return sam


def tiny_vit(
    image_size: int = 32, patch_size: int = 8, hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0
) -> torch.nn.Module:
    """A small random ``ViTModel`` (no pooler) for tests."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    return ViTModel(
        ViTConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=2 * hidden,
            image_size=image_size,
            patch_size=patch_size,
        ),
        add_pooling_layer=False,
    )


def tiny_sam(
    image_size: int = 32,
    patch_size: int = 8,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    decoder_hidden: int = 32,
    seed: int = 0,
) -> torch.nn.Module:
    """A small random ``SamModel`` (windowed + global attention, relative positions as in SAM) for tests."""
    from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

    torch.manual_seed(seed)
    cfg = SamConfig(
        vision_config=SamVisionConfig(
            hidden_size=hidden,
            output_channels=decoder_hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            image_size=image_size,
            patch_size=patch_size,
            window_size=2,
            global_attn_indexes=[layers - 1],
            mlp_dim=2 * hidden,
            initializer_range=0.02,
            num_pos_feats=decoder_hidden // 2,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(
            hidden_size=decoder_hidden, image_size=image_size, patch_size=patch_size
        ),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=decoder_hidden,
            mlp_dim=2 * decoder_hidden,
            num_attention_heads=4,
            iou_head_hidden_dim=decoder_hidden,
        ),
    )
    return SamModel(cfg)
