"""R2Gen cleaning: expected outputs derived by hand from R2Gen's rules (tokenizers.py), not by running the code."""

from __future__ import annotations

import pytest

from fedmrg.data.cleaning import clean_report, clean_report_iu, clean_report_mimic


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
