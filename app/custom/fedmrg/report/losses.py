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


def language_model_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over report tokens: logits (B, L, V), labels (B, L) with -100 ignored."""
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)


def distillation_losses(
    student_logits: torch.Tensor,
    student_hidden: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_hidden: torch.Tensor,
    positions: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine-embedding loss on final hidden states and KL on logits, over report positions (paper eq. 4-5).

    Args:
        student_logits, teacher_logits: (B, L, V).
        student_hidden, teacher_hidden: (B, L, d) final-layer hidden states.
        positions: (B, L) bool, the positions to distil (:func:`target_positions`).
        temperature: softmax temperature T of the KL term; the KL is multiplied by T^2 (Hinton et al. 2015).

    Returns:
        ``(cos, kl)``: mean (1 - cos) per position, and KL(teacher || student) averaged per position. The teacher is
        detached: gradients reach only the student.
    """
    s_h, t_h = student_hidden[positions].float(), teacher_hidden[positions].detach().float()
    cos = F.cosine_embedding_loss(s_h, t_h, torch.ones(s_h.shape[0], device=s_h.device))
    s_log = F.log_softmax(student_logits[positions].float() / temperature, dim=-1)
    t_log = F.log_softmax(teacher_logits[positions].detach().float() / temperature, dim=-1)
    kl = F.kl_div(s_log, t_log, log_target=True, reduction="batchmean") * temperature**2
    return cos, kl
