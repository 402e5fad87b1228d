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
#: Probability of "blank" the untrained head gives every observation (bias initialisation). Most observations of most
#: reports are blank; a head starting from uniform logits writes random findings into the first prompts, and the
#: example-based CE-F1 of such random reports is neither a floor nor meaningful.
INITIAL_BLANK_PROBABILITY = 0.9


class DiagnosisHead(nn.Module):
    """Linear classifier: (B, in_dim) pooled features -> (B, 14, 4) state logits; the bias starts at the log of
    :data:`INITIAL_BLANK_PROBABILITY` for blank and an even split of the rest for the other states.

    ``loss_bias`` (14, 4), zero unless :meth:`set_logit_adjustment` is called, is added to the logits in the loss only
    (:func:`diagnosis_loss`); it is a non-persistent buffer, so it is neither saved nor shared.

    Args:
        in_dim: width of the pooled encoder features.
    """

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, NUM_OBSERVATIONS * NUM_STATES)
        with torch.no_grad():  # prior initialisation (RetinaNet's, Lin et al. 2017): an untrained head says "blank"
            prior = torch.full((NUM_STATES,), (1.0 - INITIAL_BLANK_PROBABILITY) / (NUM_STATES - 1))
            prior[int(State.BLANK)] = INITIAL_BLANK_PROBABILITY
            self.linear.bias.copy_(prior.log().repeat(NUM_OBSERVATIONS))
        self.register_buffer("loss_bias", torch.zeros(NUM_OBSERVATIONS, NUM_STATES), persistent=False)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> logits (B, 14, 4) float."""
        return self.linear(pooled.to(self.linear.weight.dtype)).view(-1, NUM_OBSERVATIONS, NUM_STATES)

    @torch.no_grad()
    def set_logit_adjustment(self, states: torch.Tensor, tau: float) -> torch.Tensor:
        """PromptMRG's logit adjustment from training states (N, 14) int64: ``loss_bias[:, POS] = tau * log(p_pos)``
        with ``p_pos = (n_pos + 1) / (N + 2)`` per observation. Returns ``p_pos`` (14,) float32."""
        if states.ndim != 2 or states.shape[1] != NUM_OBSERVATIONS:
            raise ValueError(f"`states` must have shape (N, {NUM_OBSERVATIONS}), got {tuple(states.shape)}")
        p_pos = ((states == int(State.POSITIVE)).sum(0).float() + 1.0) / (states.shape[0] + 2.0)
        self.loss_bias.zero_()
        self.loss_bias[:, int(State.POSITIVE)] = tau * p_pos.log().to(self.loss_bias)
        return p_pos


def diagnosis_loss(logits: torch.Tensor, states: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the 14 observations: logits (B, 14, 4), states (B, 14) int64 in 0..3; ``bias``
    (14, 4) is added to the logits first (logit adjustment, :meth:`DiagnosisHead.set_logit_adjustment`)."""
    if states.shape != logits.shape[:2]:
        raise ValueError(f"`states` must have shape {tuple(logits.shape[:2])}, got {tuple(states.shape)}")
    logits = logits.float() if bias is None else logits.float() + bias.float()
    return F.cross_entropy(logits.flatten(0, 1), states.flatten())


def states_from_labels(labels: Mapping[str, int | None]) -> list[int]:
    """CheXpert-convention labels keyed by observation (1 / 0 / -1 / None; missing = blank) -> 14 state indices."""
    unknown = set(labels) - set(OBSERVATIONS)
    if unknown:
        raise ValueError(f"unknown observation(s) in labels: {sorted(unknown)}")
    return [int(csv_to_state(labels.get(name))) for name in OBSERVATIONS]
