"""evaluate_reports: text metrics plus clinical efficacy, conventions, and the labeler contract."""

from __future__ import annotations

import json
import sys

import pytest

from fedmrg.errors import DataError, FedMRGError
from fedmrg.metrics import evaluate_reports, text_metrics
from fedmrg.observations import OBSERVATIONS


def keyword_labeler(texts):
    """A stand-in labeler: Cardiomegaly / Pleural Effusion positive when named (negative after "no "),
    No Finding positive otherwise; everything else blank."""
    out = []
    for t in texts:
        row = dict.fromkeys(OBSERVATIONS)
        for obs, word in (("Cardiomegaly", "cardiomegaly"), ("Pleural Effusion", "effusion")):
            if f"no {word}" in t:
                row[obs] = 0
            elif word in t:
                row[obs] = 1
        row["No Finding"] = None if 1 in row.values() else 1
        out.append(row)
    return out


PREDS = {"a": "Mild cardiomegaly.", "b": "No effusion. Normal.", "c": "Small effusion."}
REFS = {"a": "Mild cardiomegaly, small effusion.", "b": "Normal study.", "c": "No effusion."}


def test_text_and_clinical_with_conventions():
    got = evaluate_reports(PREDS, REFS, meteor=False, labeler=keyword_labeler)
    assert got["n_reports"] == 3
    # text block equals text_metrics on the same input
    alone = text_metrics(PREDS, REFS, meteor=False)
    for key in ("BLEU_1", "BLEU_4", "ROUGE_L", "CIDEr"):
        assert got["text"][key] == pytest.approx(alone[key], abs=1e-12)
    # keyword labels, positives:  pred a {Card}, b {NoF}, c {Eff};  ref a {Card, Eff}, b {NoF}, c {NoF}
    # per report (tp, fp, fn): a (1, 0, 1), b (1, 0, 0), c (0, 1, 1)
    # example-based P = (1 + 1 + 0)/3, R = (1/2 + 1 + 0)/3, F1 = (2/3 + 1 + 0)/3
    ce = got["clinical"]
    assert ce["example_based"] == pytest.approx({"precision": 2 / 3, "recall": 0.5, "f1": 5 / 9})
    # micro: tp 2, fp 1, fn 2 -> P 2/3, R 1/2, F1 4/7
    assert ce["micro"] == pytest.approx({"precision": 2 / 3, "recall": 0.5, "f1": 4 / 7})
    conv = got["conventions"]
    assert conv["text"]["text_normalization"].startswith("r2gen-mimic")
    assert conv["clinical"]["labeler"].endswith("keyword_labeler")
    assert "uncertain (-1)" in conv["clinical"]["positive"] and "normalised text" in conv["clinical"]["labeled_text"]
    assert "conventions" not in got["text"] and "conventions" not in ce
    json.dumps(got)  # JSON-serialisable as is


def test_labeler_sees_normalised_text_of_both_sides():
    seen: list[str] = []

    def spy(texts):
        seen.extend(texts)
        return keyword_labeler(texts)

    evaluate_reports(PREDS, REFS, meteor=False, labeler=spy)
    assert seen == ["mild cardiomegaly .", "no effusion . normal .", "small effusion ."] + [
        "mild cardiomegaly small effusion .",
        "normal study .",
        "no effusion .",
    ]


def test_default_labeler_perfect_predictions():
    refs = {
        "a": "The heart is enlarged. Small left pleural effusion.",
        "b": "Heart size normal. Lungs are clear. No pneumothorax.",
        "c": "Right internal jugular catheter in place. No focal consolidation.",
    }
    got = evaluate_reports(dict(refs), refs, meteor=False)
    assert got["text"]["BLEU_4"] == pytest.approx(1.0, abs=1e-6)
    ce, counts = got["clinical"], got["clinical"]["counts"]
    assert counts["fp"] == counts["fn"] == 0 and counts["tp"] > 0
    assert ce["micro"]["f1"] == pytest.approx(1.0)
    # example-based: a report with no positive on either side scores 0 even when perfect (PromptMRG semantics)
    n_empty = counts["n_reports_no_positive_either"]
    assert ce["example_based"]["f1"] == pytest.approx(1.0 - n_empty / 3)
    assert "fedmrg.labels" in got["conventions"]["clinical"]["labeler"]


def test_no_clinical_and_missing_labeler(monkeypatch):
    got = evaluate_reports(PREDS, REFS, meteor=False, clinical=False)
    assert got["clinical"] is None and got["conventions"]["clinical"] is None
    monkeypatch.setitem(sys.modules, "fedmrg.labels", None)  # import of fedmrg.labels now fails
    with pytest.raises(FedMRGError, match="--no-clinical"):
        evaluate_reports(PREDS, REFS, meteor=False)


def test_errors_before_any_scoring():
    with pytest.raises(DataError, match=r"1 reference id\(s\) have no prediction, e.g. \['c'\]"):
        evaluate_reports({"a": "x.", "b": "y."}, REFS, meteor=False, labeler=keyword_labeler)
    with pytest.raises(DataError, match="must be a string"):
        evaluate_reports({**PREDS, "a": None}, REFS, meteor=False, labeler=keyword_labeler)
