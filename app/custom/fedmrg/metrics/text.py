"""Natural-language metrics of generated reports: BLEU-1..4, ROUGE-L, CIDEr and (with Java) METEOR.

The numbers are pycocoevalcap's own (its ``Bleu``, ``Rouge``, ``Cider`` and ``Meteor`` scorers are called, not
re-implemented), computed the way R2Gen, PromptMRG and R2GenGPT call them: ``{id: [text]}`` dictionaries of
normalised, space-tokenised text, one reference per report, no PTB tokenizer.

Two properties matter when comparing numbers across sites or papers:

- BLEU is corpus level (n-gram matches and lengths are summed over all reports before the geometric mean) and
  CIDEr takes its document frequencies from the evaluated references, so neither is the mean of per-site
  values: score the pooled reports, or weight site values by ``n_reports`` knowing this is an approximation.
- Scores depend on the text normalisation; each result states it under ``conventions``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from fedmrg.errors import DataError
from fedmrg.metrics.meteor import MeteorUnavailable, compute_meteor, java_on_path
from fedmrg.metrics.normalize import (
    DEFAULT_NORMALIZE,
    NormalizeName,
    Normalizer,
    apply_normalizer,
    is_empty,
    resolve_normalizer,
)

#: Metric names in the order they are reported (the keys used by R2Gen / PromptMRG logs).
TEXT_METRICS: tuple[str, ...] = ("BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr")


def check_ids(predictions: Mapping[str, object], references: Mapping[str, object], *, show: int = 5) -> list[str]:
    """The report ids shared by both mappings, in the order of ``references``.

    Raises:
        DataError: the id sets differ; the message counts and lists (up to ``show``) ids missing on each side.
    """
    missing_pred = [k for k in references if k not in predictions]
    missing_ref = [k for k in predictions if k not in references]
    if missing_pred or missing_ref:
        parts = []
        if missing_pred:
            parts.append(f"{len(missing_pred)} reference id(s) have no prediction, e.g. {missing_pred[:show]}")
        if missing_ref:
            parts.append(f"{len(missing_ref)} prediction id(s) have no reference, e.g. {missing_ref[:show]}")
        raise DataError(
            f"predictions and references must cover the same report ids ({len(predictions)} predictions, "
            f"{len(references)} references): " + "; ".join(parts)
        )
    if not references:
        raise DataError("no reports to score: predictions and references are empty")
    return list(references)


def normalize_texts(
    texts: Mapping[str, str], ids: list[str], *, normalize: Normalizer | None, what: str, allow_empty: bool
) -> dict[str, str]:
    """``{id: normalised text}`` for ``ids`` (see :func:`~fedmrg.metrics.normalize.apply_normalizer`); a text
    without words becomes ``""``.

    Raises:
        DataError: a text is not a string, or holds no word after normalisation and ``allow_empty`` is False.
    """
    out: dict[str, str] = {}
    empty: list[str] = []
    for k in ids:
        t = texts[k]
        if not isinstance(t, str):
            raise DataError(f"{what} for id {k!r} must be a string, got {type(t).__name__}")
        out[k] = apply_normalizer(normalize, t)
        if is_empty(out[k]):
            empty.append(k)
            out[k] = ""  # scored as nothing (R2Gen's decode of an empty generation), not as R2Gen's cleaned " ."
    if empty and not allow_empty:
        raise DataError(f"{len(empty)} {what}(s) hold no words after normalisation, e.g. ids {empty[:5]}")
    return out


def text_conventions(normalization: str, meteor_note: str) -> dict[str, str]:
    """The ``conventions`` block describing how the text metrics were computed."""
    return {
        "text_normalization": normalization,
        "tokenization": "whitespace split by the pycocoevalcap scorers; no PTBTokenizer",
        "references": "one reference per report, not truncated",
        "BLEU": "pycocoevalcap Bleu(4).compute_score, corpus level, reference length option 'closest'",
        "ROUGE_L": "pycocoevalcap Rouge: longest-common-subsequence F-measure, beta = 1.2, mean over reports",
        "CIDEr": "pycocoevalcap Cider (n = 4, sigma = 6): document frequencies from the evaluated references, "
        "so the value depends on the evaluated set",
        "METEOR": meteor_note,
    }


def text_metrics(
    predictions: Mapping[str, str],
    references: Mapping[str, str],
    *,
    meteor: bool | None = None,
    normalize: NormalizeName | Normalizer = DEFAULT_NORMALIZE,
    allow_empty_predictions: bool = False,
    meteor_timeout_s: float = 600.0,
) -> dict:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr of predicted against reference reports.

    Args:
        predictions: report id -> generated report.
        references: report id -> reference report; same ids as ``predictions``.
        meteor: True to require METEOR (raise when it cannot run), False to skip it, None (default) to compute
            it when ``java`` is on PATH and otherwise skip it with a note.
        normalize: normaliser applied to both sides before scoring: a name from
            :data:`~fedmrg.metrics.normalize.NORMALIZE_NAMES` (default ``"r2gen-mimic"``, R2Gen's cleaner) or a
            callable ``str -> str``; whitespace is collapsed afterwards in every case.
        allow_empty_predictions: score empty predictions (as zero overlap) instead of raising. Defaults to False.
        meteor_timeout_s: seconds before the METEOR Java process is stopped. Defaults to 600.

    Returns:
        ``{"BLEU_1": float, ..., "METEOR": float | None, "ROUGE_L": float, "CIDEr": float, "n_reports": int,
        "n_empty_predictions": int, "notes": {metric: why skipped}, "timings_s": {metric: seconds},
        "conventions": {...}}``. Scores are in [0, 1] except CIDEr (0 to about 10).

    Raises:
        DataError: ids differ, a text is not a string, or a text holds no words (references always,
            predictions unless ``allow_empty_predictions``).
        ValueError: an unknown ``normalize`` name.
        MeteorUnavailable: ``meteor=True`` and METEOR cannot run here.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    ids = check_ids(predictions, references)
    fn, normalization = resolve_normalizer(normalize)
    refs = normalize_texts(references, ids, normalize=fn, what="reference", allow_empty=False)
    preds = normalize_texts(predictions, ids, normalize=fn, what="prediction", allow_empty=allow_empty_predictions)
    gts = {k: [refs[k]] for k in ids}
    res = {k: [preds[k]] for k in ids}

    out: dict = {}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    timings["BLEU"] = time.perf_counter() - t0
    for n, value in enumerate(bleu, start=1):
        out[f"BLEU_{n}"] = float(value)

    notes: dict[str, str] = {}
    out["METEOR"] = None
    if meteor is False:
        notes["METEOR"] = "skipped: disabled by the caller (meteor=False, CLI --no-meteor)"
    elif meteor is None and java_on_path() is None:
        notes["METEOR"] = "skipped: `java` not found on PATH (METEOR 1.5 needs Java 8 or newer)"
    else:
        t0 = time.perf_counter()
        try:
            out["METEOR"], _ = compute_meteor(gts, res, timeout_s=meteor_timeout_s)
        except MeteorUnavailable as e:
            if meteor:
                raise
            notes["METEOR"] = f"skipped: {e}"
        timings["METEOR"] = time.perf_counter() - t0

    for key, scorer in (("ROUGE_L", Rouge()), ("CIDEr", Cider())):
        t0 = time.perf_counter()
        value, _ = scorer.compute_score(gts, res)
        timings[key] = time.perf_counter() - t0
        out[key] = float(value)

    meteor_note = notes.get(
        "METEOR", "pycocoevalcap Meteor: java -jar meteor-1.5.jar -l en -norm (corpus score from summed statistics)"
    )
    return {
        **{k: out[k] for k in TEXT_METRICS},
        "n_reports": len(ids),
        "n_empty_predictions": sum(1 for k in ids if is_empty(preds[k])),
        "notes": notes,
        "timings_s": timings,
        "conventions": text_conventions(normalization, meteor_note),
    }
