"""Metric text normalisers: the named choices, and the "basic" normaliser's R2Gen-style output."""

from __future__ import annotations

import pytest

from fedmrg.data.cleaning import clean_report_iu, clean_report_mimic
from fedmrg.metrics import NORMALIZE_NAMES, normalize_report, text_metrics
from fedmrg.metrics.normalize import apply_normalizer, is_empty, resolve_normalizer

CASES = [
    ("The heart is normal. Lungs clear.", "the heart is normal . lungs clear ."),
    ("the heart is normal . lungs clear .", "the heart is normal . lungs clear ."),  # R2Gen-cleaned: unchanged
    ("Heart size 2.5 cm.. No effusion...", "heart size 2.5 cm . no effusion ."),  # decimal kept, runs merged
    ("Lungs: clear, (PA/lateral) views!", "lungs clear pa lateral views"),
    ("T11-T12 XXXX fracture.\nNo pneumothorax.", "t11-t12 xxxx fracture . no pneumothorax ."),  # '-' kept
    (". . Normal.", "normal ."),  # empty sentences dropped
    ("  \n ", ""),
]


@pytest.mark.parametrize("raw, want", CASES)
def test_normalize_cases(raw, want):
    assert normalize_report(raw) == want


def test_idempotent_and_single_spaced(synthetic_pairs):
    preds, refs = synthetic_pairs
    for text in list(preds.values()) + list(refs.values()):
        once = normalize_report(text)
        assert normalize_report(once) == once
        assert once == once.lower() and "  " not in once and once.split(" ") == once.split()
        assert "," not in once and "(" not in once


@pytest.mark.shared_data
def test_on_real_reports(iu_pairs):
    preds, refs = iu_pairs
    for text in list(preds.values()) + list(refs.values()):
        once = normalize_report(text)
        assert once and normalize_report(once) == once
        assert once.split(" ") == once.split()  # what pycocoevalcap's Rouge (split on " ") needs
        r2gen = apply_normalizer(clean_report_mimic, text)
        assert r2gen == apply_normalizer(clean_report_iu, text)  # the two R2Gen cleaners agree on IU reports
        assert apply_normalizer(clean_report_mimic, r2gen) == r2gen  # and are idempotent there
        # on R2Gen-cleaned text, "basic" only merges R2Gen's empty sentences (". ." -> ".")
        toks = r2gen.split()
        merged = [t for i, t in enumerate(toks) if not (t == "." and (i == 0 or toks[i - 1] == "."))]
        assert normalize_report(r2gen) == " ".join(merged)


def test_resolve_normalizer():
    assert resolve_normalizer("r2gen-mimic")[0] is clean_report_mimic
    assert resolve_normalizer("r2gen-iu")[0] is clean_report_iu
    assert resolve_normalizer("basic")[0] is normalize_report
    fn, desc = resolve_normalizer("none")
    assert fn is None and desc.startswith("none")
    assert all(resolve_normalizer(n)[1].startswith(n) for n in NORMALIZE_NAMES)

    def shout(text: str) -> str:
        return text.upper()

    fn, desc = resolve_normalizer(shout)
    assert fn is shout and desc.startswith(f"custom: {__name__}.test_resolve_normalizer.<locals>.shout")
    with pytest.raises(ValueError, match="`normalize` must be one of"):
        resolve_normalizer("r2gen")
    with pytest.raises(ValueError, match="`normalize` must be one of"):
        text_metrics({"a": "x."}, {"a": "x."}, meteor=False, normalize="lower")


def test_apply_and_is_empty():
    assert apply_normalizer(None, "  Heart\n  normal . ") == "Heart normal ."
    assert apply_normalizer(clean_report_mimic, "") == "." and is_empty(".") and is_empty("")
    assert apply_normalizer(clean_report_mimic, "1. No effusion. 2. Heart normal.") == "no effusion . heart normal ."
    assert not is_empty("no .")
