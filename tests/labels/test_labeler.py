"""Unit tests of the rule-based labeler on invented sentences (no real report text is stored here)."""

from __future__ import annotations

import pytest

from fedmrg.labels import find_mentions, label_report, label_reports
from fedmrg.observations import OBSERVATIONS

CASES = [
    # (text, observation, expected value)
    ("No pleural effusion.", "Pleural Effusion", 0),
    ("There is a small left pleural effusion.", "Pleural Effusion", 1),
    ("Pleural effusion is not seen.", "Pleural Effusion", 0),
    ("No evidence of pneumothorax.", "Pneumothorax", 0),
    ("No focal consolidation, pleural effusion, or pneumothorax.", "Pneumothorax", 0),
    ("Lungs are clear without effusion.", "Pleural Effusion", 0),
    ("Pericardial effusion is present.", "Pleural Effusion", None),
    ("Opacity at the left base may represent atelectasis.", "Atelectasis", -1),
    ("Opacity at the left base may represent atelectasis.", "Lung Opacity", 1),
    ("Atelectasis versus pneumonia in the right lower lobe.", "Pneumonia", -1),
    ("Atelectasis versus pneumonia in the right lower lobe.", "Atelectasis", -1),
    ("Pneumonia cannot be excluded.", "Pneumonia", -1),
    ("Cannot exclude a small pneumothorax.", "Pneumothorax", -1),
    ("No new consolidation.", "Consolidation", -1),
    ("Probable small bilateral effusions.", "Pleural Effusion", -1),
    ("Streaky opacity consistent with atelectasis.", "Atelectasis", 1),
    ("Heart size is normal.", "Cardiomegaly", 0),
    ("The heart is not enlarged.", "Cardiomegaly", 0),
    ("The heart is mildly enlarged.", "Cardiomegaly", 1),
    ("Stable cardiomegaly.", "Cardiomegaly", 1),
    ("Borderline enlargement of the heart.", "Cardiomegaly", 1),
    ("Heart size is stable.", "Cardiomegaly", None),
    ("Retrocardiac opacity projecting behind the heart.", "Cardiomegaly", None),
    ("Heart size normal, increased interstitial markings.", "Cardiomegaly", 0),
    ("The cardiomediastinal silhouette is within normal limits.", "Enlarged Cardiomediastinum", 0),
    ("Widened mediastinum.", "Enlarged Cardiomediastinum", 1),
    ("Mild pulmonary vascular congestion.", "Edema", 1),
    ("Pulmonary vascularity is within normal limits.", "Edema", 0),
    ("Mild cardiomegaly without overt edema.", "Edema", 0),
    ("No change in the moderate right pleural effusion.", "Pleural Effusion", 1),
    ("Healed left rib fractures.", "Fracture", 1),
    ("No acute displaced fracture.", "Fracture", 0),
    ("Right IJ central venous catheter tip in the SVC.", "Support Devices", 1),
    ("Sternotomy wires are intact.", "Support Devices", 1),
    ("Calcified granuloma in the right upper lobe.", "Lung Lesion", None),
    ("2 cm nodule in the left upper lobe.", "Lung Lesion", 1),
    ("Collapse of the T12 vertebral body.", "Atelectasis", None),
    ("No pneumothorax, and there is a small right effusion.", "Pleural Effusion", 1),
    ("No cardiomegaly with small bilateral effusions.", "Pleural Effusion", 1),
    ("Interval resolution of the left effusion.", "Pleural Effusion", 0),
    ("Evaluation for pneumothorax is limited.", "Pneumothorax", -1),
    # "X ... cannot be excluded" reaches over the whole subject of the clause, not only a few words after X;
    # a prefix pattern's word remainder ("consolidat|ion") is not one of those words.
    ("Early consolidation in the left upper lobe cannot be excluded.", "Consolidation", -1),
    ("Fracture of the right 7th rib cannot be excluded.", "Fracture", -1),
    ("Early consolidation in the left lower lung base cannot be excluded.", "Consolidation", -1),
    ("Consolidation in the left upper lobe cannot be ruled out.", "Consolidation", -1),
    ("Consolidation in the left upper lobe is not excluded.", "Consolidation", -1),
    ("Subtle consolidation in the right lower lobe could not be excluded.", "Consolidation", -1),
    ("Pneumothorax at the right apex has not been excluded.", "Pneumothorax", -1),
    ("Additional rib fractures cannot entirely be excluded.", "Fracture", -1),
    ("Small nodule in the right apex cannot be confidently excluded.", "Lung Lesion", -1),
    ("Mild interstitial edema in both lower lobes is difficult to exclude.", "Edema", -1),
    # ... but not over a mention that is the subject of its own predicate
    ("Small effusion is seen in the left base and consolidation cannot be excluded.", "Pleural Effusion", 1),
    ("Small effusion is seen in the left base and consolidation cannot be excluded.", "Consolidation", -1),
    ("Left basilar atelectasis, although pneumonia cannot be excluded.", "Atelectasis", 1),
    # Enlarged Cardiomediastinum, nominal and adjectival forms
    ("Possible widening of the mediastinum.", "Enlarged Cardiomediastinum", -1),
    ("There is widening of the superior mediastinum.", "Enlarged Cardiomediastinum", 1),
    ("No widening of the mediastinum.", "Enlarged Cardiomediastinum", 0),
    ("Possible widened mediastinum.", "Enlarged Cardiomediastinum", -1),
    ("Possible mediastinal widening.", "Enlarged Cardiomediastinum", -1),
    ("Mediastinal widening cannot be excluded.", "Enlarged Cardiomediastinum", -1),
    ("Surgical clips in the mediastinum.", "Enlarged Cardiomediastinum", None),
]


@pytest.mark.parametrize(("text", "observation", "expected"), CASES)
def test_observation_value(text: str, observation: str, expected: int | None) -> None:
    assert label_report(text)[observation] == expected


def test_keys_and_order() -> None:
    assert list(label_report("Mild cardiomegaly.")) == list(OBSERVATIONS)


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_report_is_all_blank(text: str) -> None:
    assert all(v is None for v in label_report(text).values())


def test_no_mention_is_blank_but_no_finding() -> None:
    labels = label_report("Normal chest radiograph.")
    assert labels["No Finding"] == 1
    assert all(labels[o] is None for o in OBSERVATIONS if o != "No Finding")


def test_no_finding_rules() -> None:
    # all negative -> No Finding
    assert label_report("Heart size normal. No effusion, edema or pneumothorax.")["No Finding"] == 1
    # a positive pathology blocks it
    assert label_report("No effusion. Mild cardiomegaly.")["No Finding"] is None
    # an uncertain pathology blocks it
    assert label_report("Possible right basilar atelectasis.")["No Finding"] is None
    # support devices alone do not block it (CheXpert)
    devices = label_report("Pacemaker leads in the right ventricle. Lungs are clear. No effusion.")
    assert devices["Support Devices"] == 1 and devices["No Finding"] == 1
    # a finding outside the 14 observations blocks it when affirmed, not when negated
    assert label_report("Hyperinflated lungs consistent with emphysema.")["No Finding"] is None
    assert label_report("No emphysema. No effusion.")["No Finding"] == 1
    # No Finding is never 0
    assert {label_report(t)["No Finding"] for t in ("Large effusion.", "Clear lungs.")} <= {1, None}


def test_heart_failure_makes_blank_cardiomegaly_uncertain() -> None:
    labels = label_report("Findings consistent with CHF.")
    assert labels["Edema"] == 1 and labels["Cardiomegaly"] == -1
    assert label_report("Findings consistent with CHF. Heart size is normal.")["Cardiomegaly"] == 0


def test_positive_wins_over_negative_and_uncertain() -> None:
    # CheXpert aggregation: {neg, pos} -> pos, {unc, pos} -> pos, {neg, unc} -> unc
    assert label_report("No left effusion. Small right effusion.")["Pleural Effusion"] == 1
    assert label_report("Possible left effusion. Small right effusion.")["Pleural Effusion"] == 1
    assert label_report("No left effusion. Possible right effusion.")["Pleural Effusion"] == -1


@pytest.mark.parametrize(
    "variant",
    [
        "NO PLEURAL EFFUSION. MILD CARDIOMEGALY.",
        "no pleural effusion . mild cardiomegaly .",  # R2Gen-cleaned style
        "  No   pleural effusion;mild cardiomegaly  ",
        "No pleural effusion\nMild cardiomegaly",
        "1. No pleural effusion. 2. Mild cardiomegaly",
    ],
)
def test_case_and_punctuation_robustness(variant: str) -> None:
    labels = label_report(variant)
    assert labels["Pleural Effusion"] == 0
    assert labels["Cardiomegaly"] == 1


def test_negation_does_not_cross_sentences() -> None:
    labels = label_report("No pneumothorax. Left pleural effusion.")
    assert labels["Pneumothorax"] == 0 and labels["Pleural Effusion"] == 1


def test_deidentification_token_keeps_negation_scope() -> None:
    assert label_report("There are no XXXX of a pleural effusion.")["Pleural Effusion"] == 0


def test_decimal_point_is_not_a_sentence_end() -> None:
    # "1.5" must not split the sentence, else "cm nodule" would lose "no"
    assert label_report("No 1.5 cm nodule is seen.")["Lung Lesion"] == 0


def test_label_reports_matches_label_report() -> None:
    texts = ["No effusion.", "", "Possible pneumonia."]
    assert label_reports(texts) == [label_report(t) for t in texts]
    assert label_reports(texts, progress=True) == [label_report(t) for t in texts]


@pytest.mark.parametrize(
    ("singular", "expected"),
    [
        ("Effusion at the left and right bases is not seen.", 0),  # 6 words to the cue: NEGATION_POST's limit
        ("Effusion at both lung bases suspected.", -1),  # 4 words: UNCERTAINTY_POST's limit
    ],
)
def test_cue_window_ignores_word_remainder(singular: str, expected: int) -> None:
    # "effusion" is the whole pattern; in "effusions" the remainder "s" must not count as a word of the window.
    plural = singular.replace("Effusion", "Effusions").replace(" is ", " are ")
    assert label_report(singular)["Pleural Effusion"] == label_report(plural)["Pleural Effusion"] == expected


def test_find_mentions_exposes_evidence() -> None:
    mentions = [m for m in find_mentions("Small left pleural effusion.") if m.observation == "Pleural Effusion"]
    assert len(mentions) == 1
    assert mentions[0].text == "effusion" and mentions[0].value == 1


def test_finding_sentence_spans_cover_positive_and_uncertain_findings_only() -> None:
    from fedmrg.labels import finding_sentence_spans

    text = (
        "The heart is normal in size. Sternotomy wires are intact. No pleural effusion. "
        "There is opacity at the right lung base. Possible small left effusion"
    )
    found = [text[a:b].strip() for a, b in finding_sentence_spans(text)]
    assert found == [
        "Sternotomy wires are intact",
        "There is opacity at the right lung base",
        "Possible small left effusion",
    ]
    assert finding_sentence_spans("The lungs are clear. No pneumothorax.") == ()
