"""R2Gen cleaning: expected outputs derived by hand from R2Gen's rules (tokenizers.py), not by running the code."""

from __future__ import annotations

import pytest

from fedmrg.data.cleaning import clean_report, clean_report_iu, clean_report_mimic, remove_deid_marks


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # split on ". ", sentences joined by " . ", final " ."
        ("The heart is normal. Lungs clear.", "the heart is normal . lungs clear ."),
        # "1. " deleted, ". 2. " -> ". "
        ("1. No effusion. 2. Heart normal.", "no effusion . heart normal ."),
        # "..." -> ".." -> "." over the three passes; no trailing period -> still " ." appended
        ("Heart normal... Lungs clear", "heart normal . lungs clear ."),
        # the ":-[" range deletes : ; < = > ? @ [ ; the hyphen is kept; two spaces stay where "=" was
        ("Size: 5 cm; ratio <0.5> [stable] {x} a-b @home = ok?", "size 5 cm ratio 05 stable x a-b home  ok ."),
        # quotes, slashes, apostrophes removed before lower-casing; % + * ! removed by the pattern
        ('A 50% "loss" of T4/T5 + it\'s *new*!', "a 50 loss of t4t5  its new ."),
        # empty sentences survive (R2Gen's `!= []` filter never removes anything)
        ("No acute disease. . Stable.", "no acute disease .  . stable ."),
        # the "1. " quirk damages "T11. "
        ("Fracture of T11. Old.", "fracture of t1old ."),
        # IU cleaning keeps newlines inside a sentence
        ("Heart normal\nlungs clear. Done", "heart normal\nlungs clear . done ."),
    ],
)
def test_clean_report_iu(text, expected):
    assert clean_report_iu(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # newlines -> spaces; "___" -> "__" -> "_" ; double spaces collapsed; ":" and "_" deleted
        (
            "FINDINGS:\n\nPatient ___ has no effusion.\n IMPRESSION: Normal.",
            "findings patient  has no effusion . impression normal .",
        ),
        ("Heart normal\nlungs clear. Done", "heart normal lungs clear . done ."),
        # numbered list after collapsing the double space
        ("FINDINGS:\n1. No effusion.  2. Heart size normal.", "findings no effusion . heart size normal ."),
        # ".." collapsed up to 8 passes: 9 dots -> 5 -> 3 -> 2 -> 1
        ("Stable......... Clear", "stable . clear ."),
    ],
)
def test_clean_report_mimic(text, expected):
    assert clean_report_mimic(text) == expected


def test_clean_report_dispatch_and_bad_style():
    text = "Heart normal\nlungs clear. Done"
    assert clean_report(text, "iu") == clean_report_iu(text)
    assert clean_report(text, "mimic") == clean_report_mimic(text)
    with pytest.raises(ValueError, match="`style` must be one of"):
        clean_report(text, "chexpert")  # type: ignore[arg-type]


def test_docstring_examples():
    import doctest

    import fedmrg.data.cleaning as cleaning

    assert doctest.testmod(cleaning).failed == 0


# ----------------------------------------------------------------------------------------------------------------------
# de-identification marks (not R2Gen): expected outputs written by hand


# Real IU X-ray report text (indiana_reports.csv; the test below checks that it occurs there).
REAL_MARKED = [
    (
        "Normal pulmonary vasculature. No XXXX of pleural effusions. No infiltrates. Normal X-XXXX of chest.",
        "Normal pulmonary vasculature. No of pleural effusions. No infiltrates. Normal X-ray of chest.",
    ),
    (
        "Stable postsurgical changes. Heart XXXX, mediastinum and lung XXXX are unremarkable.",
        "Stable postsurgical changes. Heart, mediastinum and lung are unremarkable.",
    ),
    (
        "Borderline cardiomegaly. Midline sternotomy XXXX. Enlarged pulmonary arteries. Clear lungs. "
        "Inferior XXXX XXXX XXXX.",
        "Borderline cardiomegaly. Midline sternotomy. Enlarged pulmonary arteries. Clear lungs. Inferior.",
    ),
    ("There are XXXX-filled loops of mildly dilated colon", "There are filled loops of mildly dilated colon"),
    (
        "On a previous outside XXXX scan (XXXX), the right upper lobe",
        "On a previous outside scan, the right upper lobe",
    ),
]
# Made-up edge cases: only marks, lower case, a mark-only sentence between two others, no mark at all.
MADE_UP = [
    ("XXXX XXXX.", ""),
    ("the lungs are clear of xxxx . heart normal .", "the lungs are clear of. heart normal."),
    ("Lungs clear. XXXX. Heart normal.\nNo effusion.", "Lungs clear. Heart normal.\nNo effusion."),
    ("No marks here: 2.5 cm, stable.", "No marks here: 2.5 cm, stable."),
]


@pytest.mark.parametrize(("text", "expected"), REAL_MARKED + MADE_UP)
def test_remove_deid_marks(text, expected):
    assert remove_deid_marks(text) == expected
    assert remove_deid_marks(expected) == expected, "idempotent"


def _iu_reports(iu_dir) -> list[str]:
    import csv

    with (iu_dir / "indiana_reports.csv").open(newline="", encoding="utf-8") as f:
        return [t for row in csv.DictReader(f) for t in (row["findings"], row["impression"]) if t.strip()]


def test_remove_deid_marks_on_every_real_iu_report(iu_dir):
    texts = _iu_reports(iu_dir)
    marked = [t for t in texts if "XXXX" in t]
    assert len(marked) > 1000, "IU X-ray reports carry many XXXX marks"
    joined = "\n".join(texts)
    for text, _ in REAL_MARKED:
        for sentence in text.split(". "):
            assert sentence in joined, sentence
    for t in texts:
        out = remove_deid_marks(t)
        if "XXXX" not in t:
            assert out == t
            continue
        low = out.lower()
        assert "xxx" not in low, (t, out)
        assert "  " not in out and " ." not in out and " ," not in out and ",," not in out and ". ." not in out, out
        assert not out.startswith((".", ",")), out
        assert remove_deid_marks(out) == out
        cleaned = clean_report_iu(out)
        assert "xxx" not in cleaned and "ofxxx" not in cleaned.replace(" ", ""), cleaned
