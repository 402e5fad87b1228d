"""Clinical efficacy (CE): how well the observations stated in generated reports match the references.

Both sides are labelled with the same labeler (CheXpert convention per observation: ``1`` positive, ``0``
negative, ``-1`` uncertain, blank ``None`` / NaN) and binarised as **positive = 1**; uncertain, negative and
blank all count as negative, as in R2Gen's ``compute_ce.py`` and PromptMRG's ``metrics_clinical.py``.

Three averages are reported, each through scikit-learn's ``precision_recall_fscore_support`` with
``zero_division=0``:

- **example-based** (PromptMRG, and very likely the FedMRG paper): per report
  ``P = tp / (tp + fp)``, ``R = tp / (tp + fn)``, ``F1 = tp / (tp + (fp + fn) / 2)``, a zero denominator giving 0
  (PromptMRG's ``np.nan_to_num``), then the mean over reports (sklearn ``average="samples"`` is the same
  computation). A report where neither side has a positive therefore scores 0 on all three;
  ``n_reports_no_positive_either`` counts those.
- **micro** (R2Gen): tp, fp, fn summed over reports and observations.
- **macro** (R2Gen): the unweighted mean of the per-observation values over *all* observations, including those
  with no positive reference (which score 0 recall and F1; ``n_observations_without_reference_positive`` says
  how many).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from fedmrg.observations import OBSERVATIONS

_ALLOWED = (1.0, 0.0, -1.0)

CE_CONVENTIONS: dict[str, str] = {
    "positive": "label == 1; uncertain (-1), negative (0) and blank count as negative",
    "example_based": "PromptMRG: per-report P/R/F1 (zero denominator -> 0), mean over reports",
    "micro_macro": "R2Gen compute_ce: sklearn precision_recall_fscore_support, zero_division=0; macro over all "
    "observations, including those without a positive reference",
}


def labels_to_array(
    labels: Sequence[Mapping[str, int | None]], observations: Sequence[str] = OBSERVATIONS
) -> np.ndarray:
    """Stack per-report label dicts into a ``(N, K)`` float array with NaN for blank.

    Args:
        labels: one dict per report, observation name -> 1 / 0 / -1 / None (``fedmrg.labels.label_reports``).
        observations: column order; every dict must have exactly these keys. Defaults to the 14 CheXpert ones.

    Raises:
        ValueError: a dict lacks an observation or has an unknown one.
    """
    out = np.full((len(labels), len(observations)), np.nan, dtype=np.float64)
    expected = set(observations)
    for i, row in enumerate(labels):
        if set(row) != expected:
            missing, extra = sorted(expected - set(row)), sorted(set(row) - expected)
            raise ValueError(f"labels of report {i}: missing observation(s) {missing}, unknown {extra}")
        for j, obs in enumerate(observations):
            if row[obs] is not None:
                out[i, j] = row[obs]
    return out


def positive_matrix(labels: np.ndarray | Sequence[Sequence[float | None]], *, name: str = "labels") -> np.ndarray:
    """Binarise CheXpert labels: ``(N, K)`` of 1 / 0 / -1 / NaN-or-None -> ``(N, K)`` int64, 1 where positive.

    Raises:
        ValueError: not two-dimensional, or a value other than 1, 0, -1, NaN or None (position named).
    """
    arr = np.array(labels, dtype=np.float64)  # None -> NaN
    if arr.ndim != 2:
        raise ValueError(f"`{name}` must have shape (num_reports, num_observations), got shape {arr.shape}")
    bad = ~(np.isnan(arr) | np.isin(arr, _ALLOWED))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"`{name}`[{i}, {j}] = {float(arr[i, j]):g}; labels must be 1, 0, -1 or blank (None / NaN)")
    return (arr == 1.0).astype(np.int64)


def clinical_efficacy(
    pred_labels: np.ndarray | Sequence[Sequence[float | None]],
    ref_labels: np.ndarray | Sequence[Sequence[float | None]],
    *,
    observations: Sequence[str] = OBSERVATIONS,
) -> dict:
    """Example-based, micro and macro precision / recall / F1 of predicted against reference labels.

    Args:
        pred_labels: ``(N, K)`` labels of the generated reports, CheXpert values 1 / 0 / -1 / blank
            (None or NaN); row i is report i.
        ref_labels: ``(N, K)`` labels of the reference reports, same order.
        observations: the K column names. Defaults to the 14 CheXpert observations.

    Returns:
        ``{"example_based" | "micro" | "macro": {"precision", "recall", "f1"}, "per_observation": {name:
        {"precision", "recall", "f1", "n_reference_positive", "n_predicted_positive"}}, "counts": {"n_reports",
        "tp", "fp", "fn", "tn", "n_reports_no_predicted_positive", "n_reports_no_reference_positive",
        "n_reports_no_positive_either", "n_observations_without_reference_positive"}, "conventions": {...}}``.
        Values are floats in [0, 1].

    Raises:
        ValueError: shapes differ, ``K != len(observations)``, no reports, or a label is out of range.
    """
    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.metrics import precision_recall_fscore_support

    pred = positive_matrix(pred_labels, name="pred_labels")
    ref = positive_matrix(ref_labels, name="ref_labels")
    if pred.shape != ref.shape:
        raise ValueError(f"`pred_labels` has shape {pred.shape} but `ref_labels` has shape {ref.shape}")
    n, k = ref.shape
    if k != len(observations):
        raise ValueError(f"labels have {k} columns but {len(observations)} observations were named")
    if n == 0:
        raise ValueError("no reports to score: label arrays have 0 rows")

    result: dict = {}
    with warnings.catch_warnings():
        # zero denominators are expected (a report with no positives) and reported through the counts below
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        for key, average in (("example_based", "samples"), ("micro", "micro"), ("macro", "macro")):
            p, r, f, _ = precision_recall_fscore_support(ref, pred, average=average, zero_division=0)
            result[key] = {"precision": float(p), "recall": float(r), "f1": float(f)}
        p, r, f, _ = precision_recall_fscore_support(ref, pred, average=None, zero_division=0)
    ref_pos, pred_pos = ref.sum(axis=0), pred.sum(axis=0)
    result["per_observation"] = {
        obs: {
            "precision": float(p[j]),
            "recall": float(r[j]),
            "f1": float(f[j]),
            "n_reference_positive": int(ref_pos[j]),
            "n_predicted_positive": int(pred_pos[j]),
        }
        for j, obs in enumerate(observations)
    }
    tp = int((pred & ref).sum())
    fp = int((pred & (1 - ref)).sum())
    fn = int(((1 - pred) & ref).sum())
    no_pred, no_ref = pred.sum(axis=1) == 0, ref.sum(axis=1) == 0
    result["counts"] = {
        "n_reports": n,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": n * k - tp - fp - fn,
        "n_reports_no_predicted_positive": int(no_pred.sum()),
        "n_reports_no_reference_positive": int(no_ref.sum()),
        "n_reports_no_positive_either": int((no_pred & no_ref).sum()),
        "n_observations_without_reference_positive": int((ref_pos == 0).sum()),
    }
    result["conventions"] = {**CE_CONVENTIONS, "observations": f"{k}: " + ", ".join(observations)}
    return result
