"""Client-aware contrastive loss (paper 3.2.1, eq. 3).

Supervised-contrastive form (Khosla et al. 2020) on L2-normalised pooled features: for anchor i, the positives
P(i) are the other samples of the same study (its other augmented view, or another image of the study), the
denominator runs over every other in-batch sample A(i) plus the memory-bank features M sampled at *other* sites::

    L_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / tau) / (sum_{a in A(i)} exp(z_i.z_a / tau)
                                                                + sum_{m in M} exp(z_i.m / tau)) )

and the loss is the mean of L_i over anchors that have at least one positive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def client_aware_contrastive_loss(
    features: torch.Tensor,
    groups: torch.Tensor,
    negatives: torch.Tensor | None = None,
    *,
    temperature: float = 0.07,
) -> torch.Tensor:
    """Contrastive loss of eq. 3.

    Args:
        features: (M, C) pooled features of the in-batch samples (normalised here).
        groups: (M,) int64 study index of each row; equal values are positives of each other.
        negatives: optional (K, C) memory-bank features from other sites (normalised here; no gradient).
        temperature: tau > 0.

    Raises:
        ValueError: no row has a positive (each study appears once and no second view was given).
    """
    if features.ndim != 2 or groups.shape != features.shape[:1]:
        raise ValueError(
            f"`features` must be (M, C) and `groups` (M,); got {tuple(features.shape)}, {tuple(groups.shape)}"
        )
    z = F.normalize(features.float(), dim=1)
    sim = z @ z.T / temperature  # (M, M)
    m = z.shape[0]
    self_mask = torch.eye(m, dtype=torch.bool, device=z.device)
    pos_mask = (groups[:, None] == groups[None, :]) & ~self_mask
    logits = sim.masked_fill(self_mask, float("-inf"))
    if negatives is not None and negatives.numel() > 0:
        bank = F.normalize(negatives.detach().float().to(z.device), dim=1)
        logits = torch.cat([logits, z @ bank.T / temperature], dim=1)  # (M, M + K)
    log_prob = sim - torch.logsumexp(logits, dim=1, keepdim=True)  # log of each in-batch pair's share
    num_pos = pos_mask.sum(1)
    has_pos = num_pos > 0
    if not has_pos.any():
        raise ValueError("contrastive loss needs positives: give a second view of each image or repeat study groups")
    per_anchor = -(log_prob * pos_mask).sum(1)[has_pos] / num_pos[has_pos]
    return per_anchor.mean()
