"""Clinical efficacy against values worked out by hand, edge cases, and PromptMRG's formula."""

from __future__ import annotations

import numpy as np
import pytest

from fedmrg.metrics import clinical_efficacy, labels_to_array, positive_matrix
from fedmrg.observations import OBSERVATIONS

OBS3 = ("A", "B", "C")
N = None

# Four reports, three observations. Positives (label 1 only; -1, 0 and blank are negative):
#            pred        ref
#   r0   [1, 0, N]  {A}      [1, 1, 0]   {A, B}
#   r1   [1, 1, -1] {A, B}   [-1, 1, N]  {B}
#   r2   [N, N, N]  {}       [0, 0, 0]   {}
#   r3   [0, 1, 1]  {B, C}   [1, 1, 1]   {A, B, C}
PRED = [[1, 0, N], [1, 1, -1], [N, N, N], [0, 1, 1]]
REF = [[1, 1, 0], [-1, 1, N], [0, 0, 0], [1, 1, 1]]


def test_hand_computed_small_matrix():
    ce = clinical_efficacy(PRED, REF, observations=OBS3)
    # Example-based, per report (tp, fp, fn) -> P, R, F1 = tp / (tp + (fp + fn) / 2):
    #   r0 (1, 0, 1) -> 1,   1/2, 1/1.5 = 2/3
    #   r1 (1, 1, 0) -> 1/2, 1,   2/3
    #   r2 (0, 0, 0) -> 0,   0,   0        (0/0 counts as 0, PromptMRG's nan_to_num)
    #   r3 (2, 0, 1) -> 1,   2/3, 2/2.5 = 0.8
    #   mean: P = 2.5/4 = 0.625, R = (1/2 + 1 + 2/3)/4 = 0.541666..., F1 = (4/3 + 0.8)/4 = 0.533333...
    assert ce["example_based"]["precision"] == pytest.approx(0.625)
    assert ce["example_based"]["recall"] == pytest.approx(13 / 24)
    assert ce["example_based"]["f1"] == pytest.approx(8 / 15)
    # Micro: tp = 4, fp = 1, fn = 2 -> P = 4/5, R = 4/6, F1 = 8 / (8 + 1 + 2) = 8/11
    assert ce["micro"] == pytest.approx({"precision": 0.8, "recall": 2 / 3, "f1": 8 / 11})
    # Per observation: A (tp 1, fp 1, fn 1) -> 1/2, 1/2, 1/2; B (2, 0, 1) -> 1, 2/3, 4/5; C (1, 0, 0) -> 1, 1, 1
    # Macro: P = 2.5/3, R = (1/2 + 2/3 + 1)/3 = 13/18, F1 = (0.5 + 0.8 + 1)/3 = 2.3/3
    assert ce["macro"] == pytest.approx({"precision": 2.5 / 3, "recall": 13 / 18, "f1": 2.3 / 3})
    assert ce["per_observation"]["B"] == pytest.approx(
        {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "n_reference_positive": 3, "n_predicted_positive": 2}
    )
    assert ce["counts"] == {
        "n_reports": 4,
        "tp": 4,
        "fp": 1,
        "fn": 2,
        "tn": 12 - 7,
        "n_reports_no_predicted_positive": 1,  # r2
        "n_reports_no_reference_positive": 1,  # r2
        "n_reports_no_positive_either": 1,
        "n_observations_without_reference_positive": 0,
    }
    assert "uncertain (-1)" in ce["conventions"]["positive"]


def test_all_blank():
    blank = [[N, N, N], [N, N, N]]
    ce = clinical_efficacy(blank, blank, observations=OBS3)
    # every report has 0 tp, fp, fn: all three example-based values are 0/0 -> 0, micro likewise
    for key in ("example_based", "micro", "macro"):
        assert ce[key] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert ce["counts"]["n_reports_no_positive_either"] == 2
    assert ce["counts"]["n_observations_without_reference_positive"] == 3
    assert ce["counts"]["tn"] == 6


def test_no_predicted_positive_and_observation_without_reference_positive():
    # pred r0 has no positive; ref has no positive for C, pred has one (r1)
    pred = [[0, -1, N], [1, N, 1]]
    ref = [[1, 0, 0], [1, 1, N]]
    ce = clinical_efficacy(pred, ref, observations=OBS3)
    # r0: tp 0, fp 0, fn 1 -> P 0 (0/0), R 0, F1 0
    # r1: tp 1 (A), fp 1 (C), fn 1 (B) -> P 1/2, R 1/2, F1 1/2
    assert ce["example_based"] == pytest.approx({"precision": 0.25, "recall": 0.25, "f1": 0.25})
    # per observation: A tp 1, fn 1 -> P 1, R 1/2, F1 2/3; B fn 1 -> 0, 0, 0; C fp 1 -> 0, 0, 0
    assert ce["macro"] == pytest.approx({"precision": 1 / 3, "recall": 1 / 6, "f1": 2 / 9})
    assert ce["counts"]["n_reports_no_predicted_positive"] == 1
    assert ce["counts"]["n_observations_without_reference_positive"] == 1


def test_example_based_is_promptmrg_formula():
    """sklearn's ``average="samples"`` gives exactly PromptMRG's metrics_clinical.py arithmetic."""
    rng = np.random.default_rng(0)
    values = np.array([1.0, 0.0, -1.0, np.nan])
    pred = values[rng.integers(0, 4, size=(200, 14))]
    ref = values[rng.integers(0, 4, size=(200, 14))]
    pred[:10] = np.nan  # some reports with no positives at all
    ce = clinical_efficacy(pred, ref)
    p, r = pred == 1, ref == 1
    tp, fp, fn = (p & r).sum(1), (p & ~r).sum(1), (~p & r).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        want = {
            "precision": np.nan_to_num(tp / (tp + fp)).mean(),
            "recall": np.nan_to_num(tp / (tp + fn)).mean(),
            "f1": np.nan_to_num(tp / (tp + 0.5 * (fp + fn))).mean(),
        }
    assert ce["example_based"] == pytest.approx(want, abs=1e-12)
    assert list(ce["per_observation"]) == list(OBSERVATIONS)
    assert 0.0 < ce["example_based"]["f1"] < 1.0


def test_label_dicts_to_array():
    rows = [dict.fromkeys(OBSERVATIONS), {**dict.fromkeys(OBSERVATIONS, 0), "Cardiomegaly": 1, "Edema": -1}]
    arr = labels_to_array(rows)
    assert arr.shape == (2, 14) and np.isnan(arr[0]).all()
    assert arr[1, OBSERVATIONS.index("Cardiomegaly")] == 1 and arr[1, OBSERVATIONS.index("Edema")] == -1
    assert positive_matrix(arr).sum() == 1
    with pytest.raises(ValueError, match=r"report 0: missing observation\(s\) \['Edema'\]"):
        labels_to_array([{k: None for k in OBSERVATIONS if k != "Edema"}])


@pytest.mark.parametrize(
    "pred, ref, match",
    [
        ([[1, 2, 0]], [[1, 0, 0]], r"`pred_labels`\[0, 1\] = 2;"),
        ([[1, 0, 0]], [[1, 0]], "shape"),
        ([1, 0, 0], [1, 0, 0], "must have shape"),
        ([[1, 0]], [[1, 0]], "2 columns but 3 observations"),
        (np.zeros((0, 3)), np.zeros((0, 3)), "0 rows"),
    ],
)
def test_bad_input(pred, ref, match):
    with pytest.raises(ValueError, match=match):
        clinical_efficacy(pred, ref, observations=OBS3)
