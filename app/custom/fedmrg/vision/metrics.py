"""Metrics of the vision tasks: accuracy and AUC (classification), Dice and 95th-percentile Hausdorff distance
(segmentation, MONAI), computed on whole splits.

Hausdorff distances are in pixels of the model's input grid (``S x S``); an image whose prediction or reference is
empty has no Hausdorff distance and is left out of the mean (the count of valid images is reported as ``hd95_n``).
"""

from __future__ import annotations

import numpy as np
import torch


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``probs (n, C)``, ``labels (n,)`` -> ``accuracy``, ``auc`` (binary: of class 1; else macro one-vs-rest over the
    classes present; NaN when only one class is present)."""
    from sklearn.metrics import roc_auc_score

    acc = float((probs.argmax(1) == labels).mean()) if len(labels) else float("nan")
    present = np.unique(labels)
    auc = float("nan")
    if len(present) >= 2:
        if probs.shape[1] == 2:
            auc = float(roc_auc_score(labels, probs[:, 1]))
        else:
            aucs = [roc_auc_score(labels == c, probs[:, c]) for c in present]
            auc = float(np.mean(aucs))
    return {"accuracy": acc, "auc": auc}


def segmentation_metrics(logits: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    """``logits (n, 1, H, W)``, ``masks (n, 1, H, W)`` {0, 1} -> ``dice`` (mean; an image with empty reference and
    empty prediction scores 1), ``hd95`` (pixels), ``hd95_n``."""
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    pred = (logits > 0).float()
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(pred, masks)
    valid = (pred.flatten(1).sum(1) > 0) & (masks.flatten(1).sum(1) > 0)
    hd = float("nan")
    if valid.any():
        h = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(pred[valid], masks[valid])
        hd = float(torch.nanmean(h))
    return {"dice": float(dice.nanmean()), "hd95": hd, "hd95_n": float(valid.sum())}
