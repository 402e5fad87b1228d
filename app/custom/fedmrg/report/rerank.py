"""Consistency reranking: keep, among a study's candidate reports, the one that states what its prompt states.

The diagnosis head is read far better than the decoder follows it (rendered IU X-ray, 1,168 centralized steps: head
example-based F1 0.63-0.65, greedy reports 0.51-0.56; docs/results/findings.md). A small decoder's greedy path
drops rare findings whose wording varies (IU has 181 different device sentences for 166 studies) and sometimes
writes a finding into a normal study. Sampling a few more reports and keeping the one whose labels agree with the
prompt's states closes part of that gap without a second model: the rule-based labeler (:mod:`fedmrg.labels`)
reads each candidate, and agreement is the F1 between the prompt's positive observations and the candidate's.

Ties keep the earliest candidate, and the greedy (or beam) report comes first, so a study's report changes only
when a sample states the prompt strictly better. The states are the model's own (the head's argmax, or the
caller's ``states``); no reference is read. Note for evaluation: CE metrics label reports with the same labeler,
so part of the gain is agreement with that labeler's vocabulary; BLEU and the MeSH-tag check are independent.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedmrg.labels import label_report
from fedmrg.observations import NUM_OBSERVATIONS, OBSERVATIONS, State


def positive_agreement(states: Sequence[int], report: str) -> float:
    """F1 between the positive observations of ``states`` (14 :class:`State` values) and of ``report``'s labels.

    1.0 when neither side has a positive (both state nothing), 0.0 when exactly one side has.
    """
    if len(states) != NUM_OBSERVATIONS:
        raise ValueError(f"`states` must hold {NUM_OBSERVATIONS} values, got {len(states)}")
    prompt = {o for o, s in zip(OBSERVATIONS, states, strict=True) if int(s) == State.POSITIVE}
    labels = label_report(report)
    written = {o for o in OBSERVATIONS if labels.get(o) == 1}
    if not prompt and not written:
        return 1.0
    return 2 * len(prompt & written) / (len(prompt) + len(written))


def pick_consistent(candidates: Sequence[Sequence[str]], states: torch.Tensor) -> list[int]:
    """Index of the candidate kept for each study.

    Args:
        candidates: B lists of candidate reports, each in preference order (greedy / beam first).
        states: (B, 14) int64 prompt states.

    Returns:
        B indices into each study's candidate list: the first candidate of highest :func:`positive_agreement`; 0
        where the prompt has no positive state at all (not even No Finding: a head that has not learned, nothing to
        agree with; agreement would favour reports that state nothing recognisable).
    """
    if len(candidates) != states.shape[0]:
        raise ValueError(f"{len(candidates)} candidate lists for {states.shape[0]} studies")
    picks = []
    for cands, row in zip(candidates, states.tolist(), strict=True):
        if State.POSITIVE not in row:
            picks.append(0)
            continue
        scores = [positive_agreement(row, c) for c in cands]
        picks.append(max(range(len(scores)), key=lambda i: (scores[i], -i)))
    return picks


__all__ = ["pick_consistent", "positive_agreement"]
