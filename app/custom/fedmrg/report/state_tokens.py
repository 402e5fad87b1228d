"""Trainable embeddings of the diagnosis prompt tokens ``[BLA] [POS] [NEG] [UNC]`` (paper 3.2.2).

Only these rows train; the decoder's embedding matrix stays as it is (frozen in LLM mode).

Each of the 14 prompt positions is embedded as *state row + observation row*: the four state rows say what was
found, and 14 observation rows (one per :data:`fedmrg.observations.OBSERVATIONS` entry, in order) say *which*
finding the slot is about. With the four state rows alone the 14 prompt tokens share 4 embeddings, so a decoder
would have to tell "[POS] for Cardiomegaly" from "[POS] for Edema" by position only; a small frozen decoder with
LoRA on q/v may not learn that. The model initialises the observation rows from the decoder's own embeddings of the
observation names (centred, scaled down), so they start distinct.

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

from fedmrg.observations import NUM_OBSERVATIONS, OBSERVATIONS


def observation_name_embeddings(tokenizer, base_embedding: torch.Tensor, *, scale: float = 0.1) -> torch.Tensor:
    """(14, d) float32: ``scale`` x (mean input embedding of each observation name's tokens - mean of all rows).

    Centred and scaled down so that the sum with a state row stays close to a state row (at full scale the decoder
    read the prompt as the observation *words* and its reports degraded: BLEU-4 0.34 -> 0.11 in a 6-epoch run).
    Unknown tokens are left out; a name with no known token gets a random row (global torch RNG), so no two
    observations start equal.
    """
    base = base_embedding.detach().float()
    mean, std = base.mean(0), base.std(0)
    rows = []
    for name in OBSERVATIONS:
        ids = [i for i in tokenizer(name.lower(), add_special_tokens=False)["input_ids"] if i != tokenizer.unk_token_id]
        if ids:
            rows.append(base[torch.tensor(ids, dtype=torch.long)].mean(0) - mean)
        else:
            rows.append(std * torch.randn(base.shape[1]))
    return scale * torch.stack(rows)


class StateTokenEmbedding(nn.Module):
    """Overrides the embedding rows of the state tokens with *state row + observation row*.

    The k-th state token of a sequence (k = 0..13, counted left to right) is the prompt slot of observation k, so
    it gets ``weight[state] + observation[k]``; a sequence with more than 14 state tokens raises.

    Args:
        token_ids: vocabulary ids of the tokens, in :class:`fedmrg.observations.State` order.
        base_embedding: the decoder's input embedding matrix (V, d); the state rows are drawn from a normal
            distribution with its per-dimension mean and standard deviation (uses the global torch RNG).
        observation_init: (14, d) initial observation rows (e.g. :func:`observation_name_embeddings`); None draws
            them like the state rows.
    """

    def __init__(
        self, token_ids: Sequence[int], base_embedding: torch.Tensor, observation_init: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        if len(set(token_ids)) != len(token_ids):
            raise ValueError(f"`token_ids` must be distinct, got {list(token_ids)}")
        self.register_buffer("token_ids", torch.tensor(list(token_ids), dtype=torch.long), persistent=False)
        base = base_embedding.detach().float()
        init = base.mean(0) + base.std(0) * torch.randn(len(token_ids), base.shape[1])
        self.weight = nn.Parameter(init)
        if observation_init is None:
            observation_init = base.mean(0) + base.std(0) * torch.randn(NUM_OBSERVATIONS, base.shape[1])
        if tuple(observation_init.shape) != (NUM_OBSERVATIONS, base.shape[1]):
            raise ValueError(
                f"`observation_init` must have shape ({NUM_OBSERVATIONS}, {base.shape[1]}), "
                f"got {tuple(observation_init.shape)}"
            )
        self.observation = nn.Parameter(observation_init.detach().float().clone())

    def forward(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Replace, in ``inputs_embeds`` (B, T, d), the rows whose ``input_ids`` (B, T) is one of ``token_ids``."""
        hits = input_ids.unsqueeze(-1) == self.token_ids.to(input_ids.device)  # (B, T, K)
        is_state = hits.any(-1)  # (B, T)
        slot = is_state.long().cumsum(-1) - 1  # (B, T) observation index of each state token
        if bool((slot[is_state] >= NUM_OBSERVATIONS).any()):
            raise ValueError(f"a sequence has more than {NUM_OBSERVATIONS} diagnosis state tokens")
        which = hits.long().argmax(-1)  # (B, T) index into weight (0 where no hit; masked below)
        rows = self.weight[which] + self.observation[slot.clamp(0, NUM_OBSERVATIONS - 1)]
        return torch.where(is_state.unsqueeze(-1), rows.to(inputs_embeds.dtype), inputs_embeds)

    def states_to_ids(self, states: torch.Tensor) -> torch.Tensor:
        """State indices (B, 14) int64 in 0..3 -> vocabulary ids (B, 14) int64."""
        return self.token_ids.to(states.device)[states]
