"""Report section splitting (findings / impression) on report texts written for the tests."""

from __future__ import annotations

import pytest

from fedmrg.data.readers.sections import findings_and_impression, normalise_section_name, split_sections

MIMIC_STYLE = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___ with cough  // eval for pneumonia

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  The
 cardiomediastinal silhouette is normal. Dr. ___ was told at 10:30 am.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def test_mimic_style_report():
    assert [n for n, _ in split_sections(MIMIC_STYLE)] == [
        "preamble",
        "examination",
        "indication",
        "comparison",
        "findings",
        "impression",
    ]
    findings, impression = findings_and_impression(MIMIC_STYLE)
    assert findings == (
        "There is no focal consolidation, pleural effusion or pneumothorax. The cardiomediastinal silhouette "
        "is normal. Dr. ___ was told at 10:30 am."
    )
    assert impression == "No acute cardiopulmonary process."


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("FINDINGS", "findings"),
        ("FINDING", "findings"),
        ("FINDNGS", "findings"),
        ("IMPRESSION", "impression"),
        ("IMPRESSION AND RECOMMENDATION", "impression"),
        ("FINDINGS AND IMPRESSION", "impression"),
        ("FINDINGS/IMPRESSION", "impression"),
        ("CONCLUSION", "impression"),
        ("PA AND LATERAL VIEWS OF THE CHEST", "findings"),
        ("PORTABLE AP CHEST", "findings"),
        ("INDICATION", "indication"),
        ("WET READ", "wet read"),
    ],
)
def test_header_normalisation(header, name):
    assert normalise_section_name(header) == name


def test_repeated_sections_join_and_inline_text():
    text = "FINDINGS: Lungs clear.\nFINDINGS: Heart normal.\nIMPRESSION: Normal.\nRECOMMENDATION(S): None."
    assert findings_and_impression(text) == ("Lungs clear. Heart normal.", "Normal.")


def test_plain_text_without_headers_is_findings():
    assert findings_and_impression("  Heart size normal.\n Lungs clear.  ") == ("Heart size normal. Lungs clear.", "")


def test_headers_without_findings_or_impression_give_empty():
    assert findings_and_impression("INDICATION: cough\nTECHNIQUE: PA and lateral") == ("", "")


def test_lower_case_colon_lines_are_not_headers():
    text = "IMPRESSION:\nLine placed at 10:30.\nNote: heart unchanged."
    assert findings_and_impression(text) == ("", "Line placed at 10:30. Note: heart unchanged.")
