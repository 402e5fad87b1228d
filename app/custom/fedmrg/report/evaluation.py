"""Generate reports over a split and score them with the project's metrics (:func:`fedmrg.metrics.evaluate_reports`).

Predictions are written one study per line (JSONL) with the generated report, the reference, and the 14 predicted
diagnosis states with their probabilities, so a reader can check the clinical side study by study.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from fedmrg.observations import OBSERVATIONS, State
from fedmrg.report.data_loading import make_loader
from fedmrg.report.model import FedMRGModel, GeneratedReports

STATE_NAMES: tuple[str, ...] = tuple(s.name.lower() for s in State)


def describe_states(states: torch.Tensor | None, probs: torch.Tensor | None) -> list[dict[str, Any]] | None:
    """Per study: ``{observation: {"state": "positive", "probabilities": {"blank": p, ...}}}``; None without head.

    Args:
        states: (B, 14) int64 predicted states; probs: (B, 14, 4) float probabilities.
    """
    if states is None or probs is None:
        return None
    out = []
    for row_states, row_probs in zip(states.tolist(), probs.float().cpu().tolist(), strict=True):
        out.append(
            {
                obs: {
                    "state": STATE_NAMES[s],
                    "probabilities": {name: round(p, 4) for name, p in zip(STATE_NAMES, pr, strict=True)},
                }
                for obs, s, pr in zip(OBSERVATIONS, row_states, row_probs, strict=True)
            }
        )
    return out


def _generate_batch(model: FedMRGModel, images: torch.Tensor, *, generic_only: bool, **kwargs: Any) -> GeneratedReports:
    device = next(model.parameters()).device
    return model.generate(images.to(device), generic_only=generic_only, **kwargs)


def generate_for_dataset(
    model: FedMRGModel,
    dataset: Dataset,
    *,
    batch_size: int = 16,
    generic_only: bool = False,
    progress: bool = True,
    oracle_states: bool = False,
    **generate_kwargs: Any,
) -> list[dict[str, Any]]:
    """Generate a report for every study of ``dataset`` (samples of :class:`~fedmrg.report.data_loading.
    ReportDataset`). Returns rows ``{"study_id", "prediction", "reference", "states", "reference_states"}`` in
    dataset order (``reference_states``: the 14 state names of the study's labels).

    ``generate_kwargs`` override ``config.generation`` (``num_beams``, ``max_new_tokens``, ...). With
    ``oracle_states`` the prompts carry the ground-truth states instead of the diagnosis head's (an upper bound that
    shows whether the decoder follows its prompts).
    """

    def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return {
            "images": torch.stack([s["image"] for s in samples]),
            "study_ids": [s["study_id"] for s in samples],
            "reports": [s["report"] for s in samples],
            "states": torch.tensor([list(s["states"]) for s in samples], dtype=torch.long),
        }

    loader = make_loader(dataset, collate, batch_size=batch_size, shuffle=False)
    batches: Iterable[dict[str, Any]] = loader
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc="generating", unit="batch")
    rows: list[dict[str, Any]] = []
    for batch in batches:
        if oracle_states:
            generate_kwargs["states"] = batch["states"]
        gen = _generate_batch(model, batch["images"], generic_only=generic_only, **generate_kwargs)
        described = describe_states(gen.states, gen.state_probs) or [None] * len(gen.reports)
        ref_states = [[STATE_NAMES[s] for s in row] for row in batch["states"].tolist()]
        for sid, pred, ref, states, ref_st in zip(
            batch["study_ids"], gen.reports, batch["reports"], described, ref_states, strict=True
        ):
            rows.append(
                {"study_id": sid, "prediction": pred, "reference": ref, "states": states, "reference_states": ref_st}
            )
    return rows


def diagnosis_f1(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Example-based F1 of the diagnosis head's positive states against the reference states (the CE convention of
    :func:`fedmrg.metrics.clinical.clinical_efficacy`, on states instead of labelled text); None without a head.

    Beside CE-F1 it tells a low CE-F1 of a head that misses findings from one of a decoder that ignores its prompt.
    """
    from fedmrg.metrics.clinical import clinical_efficacy

    if not rows or any(r.get("states") is None or r.get("reference_states") is None for r in rows):
        return None
    positive = STATE_NAMES[int(State.POSITIVE)]
    pred = [[1.0 if r["states"][obs]["state"] == positive else 0.0 for obs in OBSERVATIONS] for r in rows]
    ref = [[1.0 if s == positive else 0.0 for s in r["reference_states"]] for r in rows]
    return float(clinical_efficacy(pred, ref)["example_based"]["f1"])


def score_rows(rows: Sequence[Mapping[str, Any]], *, meteor: bool | None = False) -> dict[str, Any]:
    """:func:`fedmrg.metrics.evaluate_reports` of prediction rows; empty predictions are scored (and counted)."""
    from fedmrg.metrics import evaluate_reports

    preds = {r["study_id"]: r["prediction"] for r in rows}
    refs = {r["study_id"]: r["reference"] for r in rows}
    result = evaluate_reports(preds, refs, meteor=meteor, allow_empty_predictions=True)
    result["n_empty_predictions"] = sum(1 for p in preds.values() if not p.strip())
    return result


def most_frequent_baseline(
    train_reports: Iterable[str], rows: Sequence[Mapping[str, Any]], *, meteor: bool | None = False
) -> dict[str, Any]:
    """Scores of the "most frequent training report" baseline on the same studies as ``rows``."""
    from fedmrg.metrics import evaluate_reports
    from fedmrg.metrics.baselines import most_frequent_report

    report = most_frequent_report(train_reports)
    refs = {r["study_id"]: r["reference"] for r in rows}
    result = evaluate_reports(dict.fromkeys(refs, report), refs, meteor=meteor)
    result["report"] = report
    return result


def headline(result: Mapping[str, Any]) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L, CIDEr and example-based CE P/R/F1 of an :func:`evaluate_reports` result."""
    text = result["text"]
    out = {k: float(text[k]) for k in ("BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "ROUGE_L", "CIDEr") if k in text}
    if result.get("clinical"):
        ce = result["clinical"]["example_based"]
        out |= {"CE_P": ce["precision"], "CE_R": ce["recall"], "CE_F1": ce["f1"]}
    return out


def write_predictions(rows: Iterable[Mapping[str, Any]], path: str | Path) -> int:
    """Write prediction rows as JSON Lines; returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
