"""All report-generation metrics in one call: text metrics plus clinical efficacy, with their conventions."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from fedmrg import __version__
from fedmrg.errors import FedMRGError
from fedmrg.metrics.clinical import clinical_efficacy, labels_to_array
from fedmrg.metrics.normalize import DEFAULT_NORMALIZE, NormalizeName, Normalizer, resolve_normalizer
from fedmrg.metrics.text import check_ids, normalize_texts, text_metrics
from fedmrg.observations import OBSERVATIONS

Labeler = Callable[[Sequence[str]], list[dict[str, int | None]]]


def default_labeler() -> Labeler:
    """``fedmrg.labels.label_reports`` (the rule-based CheXpert labeler).

    Raises:
        FedMRGError: it cannot be imported (say ``clinical=False`` to score text metrics only).
    """
    try:
        from fedmrg.labels import label_reports
    except ImportError as e:
        raise FedMRGError(
            f"clinical efficacy needs fedmrg.labels.label_reports, which could not be imported ({e}); "
            "pass clinical=False (CLI: --no-clinical) to compute the text metrics only"
        ) from e
    return label_reports


def evaluate_reports(
    predictions: Mapping[str, str],
    references: Mapping[str, str],
    *,
    meteor: bool | None = None,
    clinical: bool = True,
    labeler: Labeler | None = None,
    normalize: NormalizeName | Normalizer = DEFAULT_NORMALIZE,
    allow_empty_predictions: bool = False,
) -> dict:
    """Text metrics and clinical efficacy of generated reports against references.

    Args:
        predictions: report id -> generated report.
        references: report id -> reference report; exactly the same ids as ``predictions``.
        meteor: True requires METEOR, False skips it, None (default) computes it when ``java`` is on PATH.
        clinical: compute clinical efficacy. Defaults to True.
        labeler: texts -> per-report label dicts (1 / 0 / -1 / None per observation); defaults to
            ``fedmrg.labels.label_reports``. Both sides are labelled from their *normalised* text, as R2Gen and
            PromptMRG label cleaned text.
        normalize: normaliser applied before scoring and labelling, a name (default ``"r2gen-mimic"``, R2Gen's
            cleaner) or a callable; see :mod:`fedmrg.metrics.normalize`.
        allow_empty_predictions: score empty predictions instead of raising. Defaults to False.

    Returns:
        ``{"n_reports": int, "text": {...}, "clinical": {...} | None, "conventions": {"text": {...},
        "clinical": {...} | None}, "timings_s": {...}, "fedmrg_version": str}``; ``text`` is
        :func:`~fedmrg.metrics.text.text_metrics` and ``clinical`` is
        :func:`~fedmrg.metrics.clinical.clinical_efficacy`, each without its ``conventions``.

    Raises:
        DataError: ids differ or a text is empty / not a string (the message lists a few ids).
        ValueError: an unknown ``normalize`` name.
        FedMRGError: ``meteor=True`` but METEOR cannot run, or the default labeler is unavailable.
    """
    ids = check_ids(predictions, references)
    fn, normalization = resolve_normalizer(normalize)
    # normalise (and validate) once, up front, so a bad text fails before any scorer or the labeler runs
    refs = normalize_texts(references, ids, normalize=fn, what="reference", allow_empty=False)
    preds = normalize_texts(predictions, ids, normalize=fn, what="prediction", allow_empty=allow_empty_predictions)
    text = text_metrics(preds, refs, meteor=meteor, normalize="none", allow_empty_predictions=allow_empty_predictions)
    conventions = {"text": text.pop("conventions"), "clinical": None}
    conventions["text"]["text_normalization"] = normalization  # not "none": the texts were normalised above
    timings = {f"text.{k}": v for k, v in text.pop("timings_s").items()}

    ce = None
    if clinical:
        label = labeler if labeler is not None else default_labeler()
        t0 = time.perf_counter()
        pred_rows = label([preds[k] for k in ids])
        ref_rows = label([refs[k] for k in ids])
        timings["labeling"] = time.perf_counter() - t0
        ce = clinical_efficacy(labels_to_array(pred_rows, OBSERVATIONS), labels_to_array(ref_rows, OBSERVATIONS))
        conventions["clinical"] = {
            **ce.pop("conventions"),
            "labeler": _labeler_name(label),
            "labeled_text": "the normalised text of both predictions and references",
        }
    return {
        "n_reports": len(ids),
        "text": text,
        "clinical": ce,
        "conventions": conventions,
        "timings_s": timings,
        "fedmrg_version": __version__,
    }


def _labeler_name(label: Labeler) -> str:
    name = f"{getattr(label, '__module__', '?')}.{getattr(label, '__qualname__', type(label).__name__)}"
    if name.startswith("fedmrg.labels"):
        name += " (rule-based CheXpert phrase lists with negation / uncertainty rules; not CheXbert)"
    return name
