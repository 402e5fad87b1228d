"""Build a vision model from its configuration, turn images into tensors, and save / load a model folder.

A model folder (``fedmrg vision demo`` writes ``D/model/``; loadable without FLARE by :func:`load_model_dir`):

- ``vision_model.json``: the :class:`~fedmrg.vision.config.VisionConfig`, task kind, class names, preprocessing;
- ``shared_state.safetensors``: the trained (shared) weights, e.g. the generator and head;
- ``backbone/``: a copy of the built-in backbone (a user's backbone folder is referenced by its path instead).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmrg.errors import ConfigError
from fedmrg.fl.learner import State
from fedmrg.fl.state_files import load_state, save_state
from fedmrg.vision.backbones import Preprocessing, load_sam, load_vit, resolve_backbone_dir
from fedmrg.vision.config import VisionConfig, load_vision_config
from fedmrg.vision.data import CLASS_NAMES, TASK_KINDS, load_mask, load_rgb
from fedmrg.vision.models import CNNClassifier, CNNSegmenter, PromptedSamSegmenter, PromptedViTClassifier, VisionModel

MODEL_FILE = "vision_model.json"
STATE_FILE = "shared_state.safetensors"


def build_model(cfg: VisionConfig, backbone_dir: str | Path | None = None) -> tuple[VisionModel, Preprocessing]:
    """The model of ``cfg`` (trainable parts initialised from ``cfg.seed``) and its input preprocessing."""
    kind = TASK_KINDS[cfg.task]
    method = cfg.model_method
    if method == "cnn":
        torch.manual_seed(cfg.seed)
        model: VisionModel = CNNClassifier(len(CLASS_NAMES[cfg.task])) if kind == "classification" else CNNSegmenter()
        return model, Preprocessing(cfg.cnn_image_size)
    bdir = Path(backbone_dir) if backbone_dir else resolve_backbone_dir(cfg.backbone, kind)
    if kind == "classification":
        vit, pre = load_vit(bdir)
        torch.manual_seed(cfg.seed)
        model = PromptedViTClassifier(vit, len(CLASS_NAMES[cfg.task]), method, cfg.num_prompts, cfg.generator_heads)
    else:
        sam, pre = load_sam(bdir, seed=cfg.seed)
        torch.manual_seed(cfg.seed)
        model = PromptedSamSegmenter(sam, method, cfg.num_prompts, cfg.generator_heads)
    return model, pre


def shared_names(model: VisionModel) -> list[str]:
    """What travels: the trainable parameters, plus float buffers (BatchNorm statistics) of a trained CNN."""
    names = set(model.trainable_names())
    if not model.frozen_backbone:
        names |= {n for n, b in model.named_buffers() if b.is_floating_point()}
    return sorted(names)


def get_state(model: VisionModel, names: list[str]) -> State:
    sd = model.state_dict()
    return {n: sd[n].detach().cpu().float().numpy().copy() for n in names}


@torch.no_grad()
def set_state(model: VisionModel, state: State) -> None:
    sd = model.state_dict()
    for n, v in state.items():
        if n not in sd:
            raise ConfigError(f"shared state key {n!r} is not part of this model (another method or backbone?)")
        if tuple(sd[n].shape) != tuple(v.shape):
            raise ConfigError(
                f"shared state `{n}` has shape {tuple(v.shape)}, the model {tuple(sd[n].shape)}: "
                f"the participants use different backbones or settings"
            )
        sd[n].copy_(torch.from_numpy(np.asarray(v)))


def to_tensors(samples: list, pre: Preprocessing, kind: str) -> dict[str, torch.Tensor]:
    """Decode, resize and normalise: ``pixel_values (n, 3, S, S)`` float32, ``labels (n,)`` or ``masks (n, 1, S, S)``."""
    from PIL import Image

    s = pre.image_size
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    imgs, targets = [], []
    for smp in samples:
        arr = load_rgb(smp.image)
        imgs.append(np.asarray(Image.fromarray(arr).resize((s, s), Image.BILINEAR)))
        if kind == "classification":
            targets.append(int(smp.label))
        else:
            m = load_mask(smp.mask, arr.shape[:2], smp.name)
            targets.append(np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((s, s), Image.NEAREST)) > 127)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().div(255)
    out = {"pixel_values": ((x - mean) / std).contiguous()}
    if kind == "classification":
        out["labels"] = torch.tensor(targets, dtype=torch.long)
    else:
        out["masks"] = torch.from_numpy(np.stack(targets)).unsqueeze(1).float()
    return out


def save_model_dir(out: str | Path, cfg: VisionConfig, state: State, extra: dict[str, Any] | None = None) -> Path:
    """Write a model folder (see the module docstring); the built-in backbone is copied into it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kind = TASK_KINDS[cfg.task]
    backbone = "cnn"
    if cfg.model_method != "cnn":
        bdir = resolve_backbone_dir(cfg.backbone, kind)
        if cfg.backbone == "builtin":
            if (out / "backbone").exists():
                shutil.rmtree(out / "backbone")
            shutil.copytree(bdir, out / "backbone")
            backbone = "backbone"
        else:
            backbone = str(bdir.resolve())
    save_state(out / STATE_FILE, state)
    info = {
        "config": cfg.to_dict(),
        "kind": kind,
        "class_names": CLASS_NAMES.get(cfg.task, []),
        "backbone_dir": backbone,
        **(extra or {}),
    }
    (out / MODEL_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return out


def load_model_dir(path: str | Path) -> tuple[VisionModel, Preprocessing, dict[str, Any]]:
    """A model folder -> ``(model in eval mode, preprocessing, info)``; ConfigError naming the folder if incomplete."""
    path = Path(path)
    if not (path / MODEL_FILE).is_file() or not (path / STATE_FILE).is_file():
        raise ConfigError(
            f"{path}: not a vision model folder (needs {MODEL_FILE} and {STATE_FILE}; "
            f"`fedmrg vision demo --out D` writes D/model/)"
        )
    info = json.loads((path / MODEL_FILE).read_text(encoding="utf-8"))
    cfg = load_vision_config(info["config"], source=str(path / MODEL_FILE))
    b = info.get("backbone_dir", "cnn")
    bdir = None if b == "cnn" else (path / b if not Path(b).is_absolute() else Path(b))
    model, pre = build_model(cfg, bdir)
    state, _ = load_state(path / STATE_FILE)
    set_state(model, state)
    model.eval()
    return model, pre, info
