"""The decoder input layout: where visual tokens, diagnosis prompt tokens, BOS and the report go.

For a batch of B studies with N visual tokens and a report of T tokens (EOS included, right-padded)::

    position   0 .. N-1         N .. N+P-1            N+P     N+P+1 .. N+P+T
    content    visual tokens    diagnosis prompt      BOS     report tokens ... EOS [pad ...]
    attention  1                1                     1       report attention_mask
    label      -100             -100                  -100    report ids (-100 on padding)

With ``visual_position="after_prompt"`` the visual tokens sit between the diagnosis prompt and BOS instead
(``prompt (P) | visual (N) | BOS | report``): in a causal decoder the prompt's positions then never attend to the
visual tokens, so the prompt reads to the decoder exactly as written in words. Measured with random stand-ins for the
visual tokens in ``scripts/lm_prompt_following.py``: the decoder's own-prompt vs shuffled-prompt CE-F1 gap is 0.07
with them in front of the prompt and 0.19 after it (docs/results/findings.md).

Labels follow the HF convention (the logits at position p are scored against the label at p + 1), so the BOS
position predicts the first report token and the prompt never enters the LM loss. The diagnosis prompt is the P
tokens of :class:`fedmrg.report.diagnosis_prompt.DiagnosisPrompt` (14 observation names, each followed by its state
token); without diagnosis prompts (baselines, ``no_prompts``) it is absent. PEFT prompt tuning puts its virtual tokens in front of
position 0 and prefix tuning puts them in the key/value cache; both are added by the model, not here. Every prompt
has the same length, so generation needs no left padding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

IGNORE_INDEX = -100


@dataclass
class DecoderInputs:
    """Decoder inputs for one batch.

    Attributes:
        inputs_embeds: (B, L, d) float, L = N + P + T.
        attention_mask: (B, L) int64, 1 = attend.
        labels: (B, L) int64, :data:`IGNORE_INDEX` on the prompt and on padding.
        prompt_length: N + P, the number of prompt positions (visual + text prompt).
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    prompt_length: int


def text_prompt_ids(
    batch_size: int, bos_token_id: int, diagnosis_ids: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """Token ids of the text prompt: ``[diagnosis prompt (B, P)] [BOS]`` (B, P + 1), or ``[BOS]`` (B, 1) without."""
    bos = torch.full((batch_size, 1), bos_token_id, dtype=torch.long, device=device)
    return bos if diagnosis_ids is None else torch.cat([diagnosis_ids.to(device=device, dtype=torch.long), bos], dim=1)


def layout_inputs(
    visual_tokens: torch.Tensor,
    prompt_ids: torch.Tensor,
    embed: Callable[[torch.Tensor], torch.Tensor],
    report_ids: torch.Tensor | None = None,
    report_mask: torch.Tensor | None = None,
    visual_position: Literal["before_prompt", "after_prompt"] = "before_prompt",
) -> DecoderInputs:
    """Assemble :class:`DecoderInputs` from visual tokens (B, N, d), text prompt ids (B, P) and an optional report.

    Args:
        visual_tokens: projected visual tokens (B, N, d).
        prompt_ids: text prompt ids (B, P) int64 from :func:`text_prompt_ids`.
        embed: maps ids (B, S) to embeddings (B, S, d) (the decoder's embedding with the state-token override).
        report_ids: report ids (B, T) int64 ending with EOS, right-padded; None at generation time.
        report_mask: (B, T) with 1 on real tokens, 0 on padding; required with ``report_ids``.
        visual_position: ``"before_prompt"`` (visual, prompt, BOS, report) or ``"after_prompt"`` (prompt, visual,
            BOS, report); BOS is the last id of ``prompt_ids``.
    """
    batch, device = visual_tokens.shape[0], visual_tokens.device
    if prompt_ids.shape[0] != batch:
        raise ValueError(f"`prompt_ids` has batch size {prompt_ids.shape[0]}, visual tokens {batch}")
    text_ids = prompt_ids
    if report_ids is not None:
        if report_mask is None or report_mask.shape != report_ids.shape or report_ids.shape[0] != batch:
            raise ValueError(
                f"`input_ids` and `attention_mask` must both have shape (B={batch}, T); got "
                f"{tuple(report_ids.shape)} and {None if report_mask is None else tuple(report_mask.shape)}"
            )
        text_ids = torch.cat([prompt_ids, report_ids.to(device)], dim=1)
    text_embeds = embed(text_ids)
    visual = visual_tokens.to(text_embeds.dtype)
    if visual_position == "before_prompt":
        inputs_embeds = torch.cat([visual, text_embeds], dim=1)
    elif visual_position == "after_prompt":
        cut = prompt_ids.shape[1] - 1  # the diagnosis prompt; BOS and the report follow the visual tokens
        inputs_embeds = torch.cat([text_embeds[:, :cut], visual, text_embeds[:, cut:]], dim=1)
    else:
        raise ValueError(f"`visual_position` must be 'before_prompt' or 'after_prompt', got {visual_position!r}")
    prompt_length = visual_tokens.shape[1] + prompt_ids.shape[1]
    attention_mask = torch.ones(batch, inputs_embeds.shape[1], dtype=torch.long, device=device)
    labels = torch.full((batch, inputs_embeds.shape[1]), IGNORE_INDEX, dtype=torch.long, device=device)
    if report_ids is not None:
        real = report_mask.to(device).bool()
        attention_mask[:, prompt_length:] = real.long()
        labels[:, prompt_length:] = torch.where(real, report_ids.to(device), IGNORE_INDEX)
    return DecoderInputs(inputs_embeds, attention_mask, labels, prompt_length)
