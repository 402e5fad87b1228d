"""Split a free-text radiology report into its FINDINGS and IMPRESSION sections.

Reports written by radiologists (MIMIC-CXR's ``sNNN.txt``, hospital exports) put section headers in capitals at
the start of a line, followed by a colon: ``EXAMINATION:``, ``INDICATION:``, ``FINDINGS:``, ``IMPRESSION:``.
The header names are normalised as in MIT-LCP's ``mimic-cxr/txt/section_parser.py`` (the parser the MIMIC-CXR
authors publish), reduced to what FedMRG needs: typos and variants of *findings* / *impression*, "conclusion"
counts as impression, "findings and impression" as impression, and headers describing the views ("PA AND
LATERAL VIEWS OF THE CHEST:") as findings. Written by hand because no maintained library on PyPI does this.
"""

from __future__ import annotations

import re

# A header: capitals (and a few separators) at the start of a line, then a colon. Lower case never matches, so
# ordinary sentences with a colon are left alone.
_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z /(),&-]*?)[ \t]*:", re.MULTILINE)

_ALIASES = {
    "finding": "findings",
    "findins": "findings",
    "findngs": "findings",
    "finidngs": "findings",
    "conclusion": "impression",
    "conclusions": "impression",
    "impresion": "impression",
    "impresson": "impression",
    "impession": "impression",
    "summary": "impression",
    "findings and impression": "impression",
    "findings/impression": "impression",
    "impression and findings": "impression",
}
_VIEW_WORDS = re.compile(r"\b(chest|portable|view|views|pa and lat|ap and lat|frontal|upright|semi-upright)\b")


def normalise_section_name(header: str) -> str:
    """``"FINDINGS"`` -> ``"findings"``, ``"IMPRESSION AND RECOMMENDATION"`` -> ``"impression"``, ..."""
    name = " ".join(header.lower().split())
    if name in _ALIASES:
        return _ALIASES[name]
    for main in ("impression", "findings"):
        if main in name:
            return main
    return "findings" if _VIEW_WORDS.search(name) else name


def split_sections(text: str) -> list[tuple[str, str]]:
    """``[(normalised name, body), ...]`` in report order; text before the first header is ``"preamble"``.

    Bodies have their whitespace collapsed to single spaces.
    """
    matches = list(_HEADER.finditer(text))
    out: list[tuple[str, str]] = []
    start = 0
    name = "preamble"
    for m in matches:
        out.append((name, " ".join(text[start : m.start()].split())))
        name, start = normalise_section_name(m.group(1)), m.end()
    out.append((name, " ".join(text[start:].split())))
    return [(n, body) for n, body in out if n != "preamble" or body]


def findings_and_impression(text: str) -> tuple[str, str]:
    """The ``(findings, impression)`` of a report.

    Several sections with the same name are joined with a space. A text with no header at all is taken to be
    the findings (a plain report body, as many hospital exports are); a text with headers but neither a findings
    nor an impression section gives ``("", "")``, which readers count as a skip.
    """
    sections = split_sections(text)
    if all(n == "preamble" for n, _ in sections):
        return " ".join(text.split()), ""
    findings = " ".join(body for n, body in sections if n == "findings" and body)
    impression = " ".join(body for n, body in sections if n == "impression" and body)
    return findings, impression
