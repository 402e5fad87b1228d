"""Visual projector: encoder patch features -> decoder-width visual tokens (R2GenGPT's ``llama_proj`` + LayerNorm)."""

from __future__ import annotations

import torch
from torch import nn


class VisualProjector(nn.Module):
    """Linear + LayerNorm mapping (B, N, in_dim) patch features to (B, N, out_dim) visual tokens.

    The LayerNorm's gain starts at zero, so the untrained projector emits zero vectors and the frozen decoder first
    reads only its text prompt (the zero-initialised entry of a new input path into a pretrained network, as in
    ControlNet's zero convolutions and LLaMA-Adapter's zero-gated attention); gradients open the path from the first
    step. A unit-variance LayerNorm output at random would be ~16x the norm of the built-in decoder's word embeddings
    and derails it: the untrained model then continues the prompt instead of writing a report.

    Args:
        in_dim: encoder feature width C (2048 for ResNet-101).
        out_dim: decoder hidden size d_model (4096 for Llama-2-7B).
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)
        nn.init.zeros_(self.norm.weight)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, N, in_dim) -> (B, N, out_dim), same dtype as the projector's weights."""
        return self.norm(self.linear(patches.to(self.linear.weight.dtype)))
