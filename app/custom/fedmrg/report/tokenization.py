"""From study records to model batches: report tokens with EOS, diagnosis states, padding.

A *sample* is a mapping with ``image`` (3, H, W) float32, optional ``view`` (3, H, W) (a second augmented view for
the contrastive loss), ``report`` (str), ``states`` (14 ints in 0..3) and ``study_id`` (str). Datasets build samples
with :func:`make_sample`; :class:`ReportCollator` turns a list of them into the batch :meth:`FedMRGModel.forward`
takes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from fedmrg.data.records import StudyRecord
from fedmrg.errors import DataError
from fedmrg.observations import NUM_OBSERVATIONS, STATE_TOKENS
from fedmrg.report.diagnosis import NUM_STATES, states_from_labels


def encode_report(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    *,
    max_tokens: int,
    study_id: str = "?",
    drop_ids: frozenset[int] = frozenset(),
) -> list[int]:
    """Report text -> token ids ending with EOS, at most ``max_tokens`` long (truncated before the EOS).

    ``drop_ids`` are removed first (the collator passes the prompt-token ids: a literal "[POS]" in a report must
    not act as a diagnosis prompt).

    Raises:
        DataError: the report is empty or tokenizes to nothing (names the study).
    """
    ids, _ = encode_report_weighted(tokenizer, text, max_tokens=max_tokens, study_id=study_id, drop_ids=drop_ids)
    return ids


def encode_report_weighted(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    *,
    max_tokens: int,
    study_id: str = "?",
    drop_ids: frozenset[int] = frozenset(),
    finding_weight: float = 1.0,
) -> tuple[list[int], list[float]]:
    """:func:`encode_report` and one LM-loss weight per id: ``finding_weight`` on the tokens of the sentences that
    state a finding (:func:`fedmrg.labels.finding_sentence_spans`), 1 elsewhere and on the EOS.

    At ``finding_weight == 1`` the report is not labeled. Otherwise the tokenizer must give character offsets (a
    fast tokenizer); a token belongs to a sentence when its characters overlap the sentence's span.
    """
    if not text or not text.strip():
        raise DataError(f"study {study_id!r}: empty report; cannot train report generation on it")
    text = text.strip()
    weighted = finding_weight != 1.0
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=weighted)
    ids = enc["input_ids"]
    if not ids:
        raise DataError(f"study {study_id!r}: report {text[:60]!r} tokenizes to no tokens")
    weights = [1.0] * len(ids)
    if weighted:
        from fedmrg.labels import finding_sentence_spans  # the labels area; imported only when weighting

        spans = finding_sentence_spans(text)
        weights = [finding_weight if any(a < e and s < b for s, e in spans) else 1.0 for a, b in enc["offset_mapping"]]
    kept = [(i, w) for i, w in zip(ids, weights, strict=True) if i not in drop_ids]
    if not kept:
        raise DataError(f"study {study_id!r}: report {text[:60]!r} has only prompt tokens")
    kept = kept[: max_tokens - 1]
    return [i for i, _ in kept] + [tokenizer.eos_token_id], [w for _, w in kept] + [1.0]


def record_states(record: StudyRecord, labeler: Callable[[str], Mapping[str, int | None]] | None = None) -> list[int]:
    """14 diagnosis states of a record: from ``record.labels``, else by labeling its report.

    ``labeler`` defaults to :func:`fedmrg.labels.label_report` (the rule-based CheXpert labeler).
    """
    labels = record.labels
    if labels is None:
        if labeler is None:
            from fedmrg.labels import label_report  # the labels area; imported only when needed

            labeler = label_report
        labels = labeler(record.report)
    try:
        return states_from_labels(labels)
    except ValueError as e:
        raise DataError(f"study {record.study_id!r}: {e}") from e


def make_sample(record: StudyRecord, image: torch.Tensor, *, view: torch.Tensor | None = None) -> dict[str, Any]:
    """A sample for :class:`ReportCollator` from a record and its loaded, transformed image(s) (3, H, W)."""
    if not record.report.strip():
        raise DataError(f"study {record.study_id!r}: empty report (no findings and no impression)")
    sample: dict[str, Any] = {
        "image": image,
        "report": record.report,
        "states": record_states(record),
        "study_id": record.study_id,
    }
    if view is not None:
        sample["view"] = view
    return sample


class ReportCollator:
    """Collate samples into a batch: ``images`` (B, 3, H, W) float32, ``input_ids`` / ``attention_mask`` (B, T)
    int64 right-padded, ``states`` (B, 14) int64, ``views`` when every sample has a ``view``, ``study_ids``; with
    ``finding_weight != 1`` also ``token_weights`` (B, T) float32 (0 on padding).

    Args:
        tokenizer: the model's tokenizer (``FedMRGModel.tokenizer``).
        max_report_tokens: report length cap in tokens, EOS included (``decoder.max_report_tokens``).
        finding_weight: LM-loss weight of the tokens of finding sentences (``losses.finding_weight``); training
            collators pass it, evaluation collators leave 1 so that validation LM loss stays per token.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, *, max_report_tokens: int = 100, finding_weight: float = 1.0
    ) -> None:
        if max_report_tokens < 2:
            raise ValueError(f"`max_report_tokens` must be >= 2, got {max_report_tokens}")
        if finding_weight <= 0:
            raise ValueError(f"`finding_weight` must be > 0, got {finding_weight}")
        self.tokenizer = tokenizer
        self.max_report_tokens = max_report_tokens
        self.finding_weight = float(finding_weight)
        vocab = tokenizer.get_vocab()
        self.prompt_token_ids = frozenset(vocab[t] for t in STATE_TOKENS if t in vocab)

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise DataError("cannot collate an empty list of samples")
        encoded = [
            encode_report_weighted(
                self.tokenizer,
                s["report"],
                max_tokens=self.max_report_tokens,
                study_id=s.get("study_id", "?"),
                drop_ids=self.prompt_token_ids,
                finding_weight=self.finding_weight,
            )
            for s in samples
        ]
        ids = [x for x, _ in encoded]
        length = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(ids), length), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), length), dtype=torch.long)
        for row, x in enumerate(ids):
            input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
            attention_mask[row, : len(x)] = 1
        states = torch.tensor([list(s["states"]) for s in samples], dtype=torch.long)
        if states.shape[1:] != (NUM_OBSERVATIONS,) or states.min() < 0 or states.max() >= NUM_STATES:
            raise DataError(f"`states` must be {NUM_OBSERVATIONS} ints in 0..{NUM_STATES - 1} per sample")
        batch: dict[str, Any] = {
            "images": torch.stack([s["image"].float() for s in samples]),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "states": states,
            "study_ids": [s.get("study_id", "?") for s in samples],
        }
        if self.finding_weight != 1.0:
            token_weights = torch.zeros((len(ids), length), dtype=torch.float32)
            for row, (_, w) in enumerate(encoded):
                token_weights[row, : len(w)] = torch.tensor(w, dtype=torch.float32)
            batch["token_weights"] = token_weights
        if all("view" in s for s in samples):
            batch["views"] = torch.stack([s["view"].float() for s in samples])
        return batch
