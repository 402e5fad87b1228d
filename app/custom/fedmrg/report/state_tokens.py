"""Trainable embeddings of the diagnosis prompt tokens ``[BLA] [POS] [NEG] [UNC]`` (paper 3.2.2).

Only these four rows train; the decoder's embedding matrix stays as it is (frozen in LLM mode). Which observation a
state token is about is said by the observation's name written just before it (:mod:`fedmrg.report.diagnosis_prompt`),
and the rows start from the decoder's own embeddings of the words "blank", "positive", "negative", "uncertain".

Why not PEFT's ``trainable_token_indices``: it gives *each* LoRA adapter its own copy of the rows
(``TrainableTokensLayer``) and refuses to run several active adapters whose token indices overlap
(``_check_overlapping_tokens`` raises "Token indices of adapter ... are already defined"), which is exactly what the
specialized step (S1 + S2 active) and mixed inference (G + S1 + S2) need. FedMRG also wants one shared copy of the
rows (it travels with the encoder and G), not one per adapter. Because the model builds ``inputs_embeds`` itself
(visual tokens go in front of the text), overriding the rows there is a ``torch.where``; this module does just that.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class StateTokenEmbedding(nn.Module):
    """Overrides the embedding rows of the state tokens with trainable rows.

    Args:
        token_ids: vocabulary ids of the tokens, in :class:`fedmrg.observations.State` order.
        base_embedding: the decoder's input embedding matrix (V, d).
        init: (K, d) initial rows (e.g. :meth:`fedmrg.report.diagnosis_prompt.DiagnosisPrompt.state_word_embeddings`);
            None draws them from a normal distribution with the per-dimension mean and standard deviation of
            ``base_embedding`` (global torch RNG).
    """

    def __init__(
        self, token_ids: Sequence[int], base_embedding: torch.Tensor, init: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        if len(set(token_ids)) != len(token_ids):
            raise ValueError(f"`token_ids` must be distinct, got {list(token_ids)}")
        self.register_buffer("token_ids", torch.tensor(list(token_ids), dtype=torch.long), persistent=False)
        base = base_embedding.detach().float()
        if init is None:
            init = base.mean(0) + base.std(0) * torch.randn(len(token_ids), base.shape[1])
        if tuple(init.shape) != (len(token_ids), base.shape[1]):
            raise ValueError(f"`init` must have shape ({len(token_ids)}, {base.shape[1]}), got {tuple(init.shape)}")
        self.weight = nn.Parameter(init.detach().float().clone())

    def forward(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Replace, in ``inputs_embeds`` (B, T, d), the rows whose ``input_ids`` (B, T) is one of ``token_ids``."""
        hits = input_ids.unsqueeze(-1) == self.token_ids.to(input_ids.device)  # (B, T, K)
        is_state = hits.any(-1)  # (B, T)
        rows = self.weight[hits.long().argmax(-1)]  # (B, T, d); index 0 where no hit, masked below
        return torch.where(is_state.unsqueeze(-1), rows.to(inputs_embeds.dtype), inputs_embeds)
