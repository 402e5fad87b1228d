"""Decoder-side losses: the language-modelling loss (paper eq. 1) and mutual distillation (paper eq. 4-5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedmrg.report.prompt_layout import IGNORE_INDEX


def target_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: positions whose logits predict a report token (label at p + 1 is not ignored)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


def language_model_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None, *, per_sample: bool = False
) -> torch.Tensor:
    """Next-token cross-entropy over report tokens: logits (B, L, V), labels (B, L) with -100 ignored.

    Args:
        weights: (B, L) float weight of each label position (``FedMRGOutput.label_weights``), or None for 1. The
            loss is the weighted mean ``sum(w * ce) / sum(w)`` over the non-ignored labels, so weights only shift
            attention between tokens and a batch's loss stays on the per-token scale.
        per_sample: one value per study (B,), each over its own tokens (DP-SGD needs per-study losses), instead of
            one over the batch.
    """
    targets = labels[:, 1:]
    ce = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )  # (B, L-1)
    w = (targets != IGNORE_INDEX).to(ce.dtype)
    if weights is not None:
        w = w * weights[:, 1:].to(ce.dtype)
    if per_sample:
        return (ce * w).sum(1) / w.sum(1).clamp(min=1e-8)
    return (ce * w).sum() / w.sum().clamp(min=1e-8)


def distillation_losses(
    student_logits: torch.Tensor,
    student_hidden: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_hidden: torch.Tensor,
    positions: torch.Tensor,
    *,
    temperature: float = 1.0,
    per_sample: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine-embedding loss on final hidden states and KL on logits, over report positions (paper eq. 4-5).

    Args:
        student_logits, teacher_logits: (B, L, V).
        student_hidden, teacher_hidden: (B, L, d) final-layer hidden states.
        positions: (B, L) bool, the positions to distil (:func:`target_positions`).
        temperature: softmax temperature T of the KL term; the KL is multiplied by T^2 (Hinton et al. 2015).
        per_sample: average over each study's own positions and return (B,) values (DP-SGD needs per-study losses)
            instead of one mean over all positions of the batch.

    Returns:
        ``(cos, kl)``: mean (1 - cos) per position, and KL(teacher || student) averaged per position; scalars, or
        (B,) with ``per_sample``. The teacher is detached: gradients reach only the student.
    """
    mask = positions.to(torch.float32)
    cos = 1.0 - F.cosine_similarity(student_hidden.float(), teacher_hidden.detach().float(), dim=-1)  # (B, L)
    s_log = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t_log = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    kl = (t_log.exp() * (t_log - s_log)).sum(-1) * temperature**2  # (B, L)
    if per_sample:
        count = mask.sum(1).clamp(min=1.0)
        return (cos * mask).sum(1) / count, (kl * mask).sum(1) / count
    count = mask.sum().clamp(min=1.0)
    return (cos * mask).sum() / count, (kl * mask).sum() / count
