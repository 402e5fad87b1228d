"""Prediction and evaluation with a saved vision model folder (no FLARE): ``fedmrg vision predict`` / ``evaluate``.

Segmentation is scored at each image's own size: the model's logits (``S x S``) are resized bilinearly to the image
and thresholded at 0; Dice and the 95th-percentile Hausdorff distance (pixels of the original image) per image, then
averaged (an image with empty prediction or reference has no Hausdorff distance; ``hd95_n`` counts the valid ones).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedmrg.errors import DataError
from fedmrg.vision.bundle import load_model_dir, to_tensors
from fedmrg.vision.data import (
    CONVERSIONS,
    IMAGE_SUFFIXES,
    Sample,
    find_npz,
    load_mask,
    load_rgb,
    read_image_csv_folder,
    read_image_mask_folder,
    read_npz,
)
from fedmrg.vision.metrics import classification_metrics, segmentation_metrics


@torch.no_grad()
def _logits(model, pre, samples: list[Sample], kind: str, batch: int = 32) -> torch.Tensor:
    outs = []
    for i in range(0, len(samples), batch):
        chunk = samples[i : i + batch]
        if kind == "segmentation":  # masks not needed for the forward pass
            chunk = [Sample(s.name, s.image, mask=np.zeros((1, 1), bool)) for s in chunk]
            x = _pixels(chunk, pre)
        else:
            x = to_tensors([Sample(s.name, s.image, label=0) for s in chunk], pre, "classification")["pixel_values"]
        outs.append(model(x).float())
    return torch.cat(outs)


def _pixels(samples: list[Sample], pre) -> torch.Tensor:
    return to_tensors([Sample(s.name, s.image, label=0) for s in samples], pre, "classification")["pixel_values"]


def _resize_logits(logit: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(logit[None], size=hw, mode="bilinear", align_corners=False)[0]


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of images")
    imgs = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not imgs:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return imgs


def predict_folder(model_dir: str | Path, images: str | Path, out: str | Path, overlays: bool = False) -> dict:
    """Write predictions for every image in ``images`` into ``out`` (see ``fedmrg vision predict``)."""
    from PIL import Image

    model, pre, info = load_model_dir(model_dir)
    kind = info["kind"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = list_images(images)
    samples = [Sample(p.stem, str(p)) for p in paths]
    if kind == "classification":
        names = info["class_names"]
        probs = torch.softmax(
            torch.cat([_logits(model, pre, samples[i : i + 64], kind) for i in range(0, len(samples), 64)]), 1
        ).numpy()
        with (out / "predictions.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["image", "prediction", *[f"p_{c}" for c in names]])
            for p, row in zip(paths, probs, strict=True):
                w.writerow([p.name, names[int(row.argmax())], *[f"{v:.6f}" for v in row]])
        return {"images": len(paths), "file": str(out / "predictions.csv")}
    if overlays:
        (out / "overlays").mkdir(exist_ok=True)
    for p in paths:
        img = load_rgb(str(p))
        logit = _logits(model, pre, [Sample(p.stem, img)], kind)[0]
        mask = (_resize_logits(logit, img.shape[:2])[0] > 0).numpy()
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"{p.stem}.png")
        if overlays:
            Image.fromarray(overlay(img, mask)).save(out / "overlays" / f"{p.stem}.png")
    return {"images": len(paths), "folder": str(out), "conversions": dict(CONVERSIONS)}


def overlay(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the mask tinted red (40 %) and its outline in yellow, ``(H, W, 3)`` uint8."""
    out = img.astype(np.float32).copy()
    out[mask] = 0.6 * out[mask] + 0.4 * np.array([255, 0, 0])
    edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
    out[edge] = [255, 255, 0]
    return out.clip(0, 255).astype(np.uint8)


def evaluate_path(model_dir: str | Path, data: str | Path, max_images: int = 0) -> dict[str, Any]:
    """Metrics of the model on ``data``: a MedMNIST ``.npz`` (its ``test_*`` else ``val_*`` arrays), an image folder
    with ``labels.csv``, or a folder with ``images/`` + ``masks/``."""
    model, pre, info = load_model_dir(model_dir)
    kind = info["kind"]
    data = Path(data)
    if kind == "classification":
        if data.suffix == ".npz" or (data.is_dir() and list(data.glob("*.npz"))):
            f = find_npz(data, prefix="")
            with np.load(f) as d:
                split = "test" if "test_images" in d.files else "val"
            samples, source = read_npz(f, split, prefix=""), f"{f} ({split}_*)"
        else:
            samples, source = read_image_csv_folder(data, info["class_names"]), str(data)
        samples = samples[:max_images] if max_images else samples
        logits = torch.cat([_logits(model, pre, samples[i : i + 64], kind) for i in range(0, len(samples), 64)])
        labels = np.array([s.label for s in samples])
        m = classification_metrics(torch.softmax(logits, 1).numpy(), labels)
    else:
        samples, source = read_image_mask_folder(data), str(data)
        samples = samples[:max_images] if max_images else samples
        per = []
        for s in samples:
            img = load_rgb(s.image)
            ref = load_mask(s.mask, img.shape[:2], s.name)
            logit = _resize_logits(_logits(model, pre, [Sample(s.name, img)], kind)[0], img.shape[:2])
            per.append(segmentation_metrics(logit[None], torch.from_numpy(ref)[None, None].float()))
        hds = [p["hd95"] for p in per if np.isfinite(p["hd95"])]
        m = {
            "dice": float(np.mean([p["dice"] for p in per])),
            "hd95": float(np.mean(hds)) if hds else float("nan"),
            "hd95_n": float(len(hds)),
        }
    return {
        "data": source,
        "images": len(samples),
        "task": info["config"]["task"],
        "method": info["config"]["method"],
        "metrics": m,
        "conversions": dict(CONVERSIONS),
    }


def write_json(path: str | Path, obj: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=1, default=lambda v: None) + "\n", encoding="utf-8")
