"""Diagnosis head (paper 3.2.2, PromptMRG): pooled visual features -> 4 states for each of 14 observations.

States follow :class:`fedmrg.observations.State` (0 blank, 1 positive, 2 negative, 3 uncertain), the class order of
CheXbert and of the prompt tokens ``[BLA] [POS] [NEG] [UNC]``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fedmrg.observations import NUM_OBSERVATIONS, OBSERVATIONS, State, csv_to_state

NUM_STATES = len(State)


class DiagnosisHead(nn.Module):
    """Linear classifier: (B, in_dim) pooled features -> (B, 14, 4) state logits.

    Args:
        in_dim: width of the pooled encoder features.
    """

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, NUM_OBSERVATIONS * NUM_STATES)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> logits (B, 14, 4) float."""
        return self.linear(pooled.to(self.linear.weight.dtype)).view(-1, NUM_OBSERVATIONS, NUM_STATES)


def diagnosis_loss(logits: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the 14 observations: logits (B, 14, 4), states (B, 14) int64 in 0..3."""
    if states.shape != logits.shape[:2]:
        raise ValueError(f"`states` must have shape {tuple(logits.shape[:2])}, got {tuple(states.shape)}")
    return F.cross_entropy(logits.float().flatten(0, 1), states.flatten())


def states_from_labels(labels: Mapping[str, int | None]) -> list[int]:
    """CheXpert-convention labels keyed by observation (1 / 0 / -1 / None; missing = blank) -> 14 state indices."""
    unknown = set(labels) - set(OBSERVATIONS)
    if unknown:
        raise ValueError(f"unknown observation(s) in labels: {sorted(unknown)}")
    return [int(csv_to_state(labels.get(name))) for name in OBSERVATIONS]
