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
    if not text or not text.strip():
        raise DataError(f"study {study_id!r}: empty report; cannot train report generation on it")
    ids = tokenizer(text.strip(), add_special_tokens=False)["input_ids"]
    if not ids:
        raise DataError(f"study {study_id!r}: report {text[:60]!r} tokenizes to no tokens")
    ids = [i for i in ids if i not in drop_ids]
    if not ids:
        raise DataError(f"study {study_id!r}: report {text[:60]!r} has only prompt tokens")
    return ids[: max_tokens - 1] + [tokenizer.eos_token_id]


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
    int64 right-padded, ``states`` (B, 14) int64, ``views`` when every sample has a ``view``, ``study_ids``.

    Args:
        tokenizer: the model's tokenizer (``FedMRGModel.tokenizer``).
        max_report_tokens: report length cap in tokens, EOS included (``decoder.max_report_tokens``).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, max_report_tokens: int = 100) -> None:
        if max_report_tokens < 2:
            raise ValueError(f"`max_report_tokens` must be >= 2, got {max_report_tokens}")
        self.tokenizer = tokenizer
        self.max_report_tokens = max_report_tokens
        vocab = tokenizer.get_vocab()
        self.prompt_token_ids = frozenset(vocab[t] for t in STATE_TOKENS if t in vocab)

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise DataError("cannot collate an empty list of samples")
        ids = [
            encode_report(
                self.tokenizer,
                s["report"],
                max_tokens=self.max_report_tokens,
                study_id=s.get("study_id", "?"),
                drop_ids=self.prompt_token_ids,
            )
            for s in samples
        ]
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
        if all("view" in s for s in samples):
            batch["views"] = torch.stack([s["view"].float() for s in samples])
        return batch
