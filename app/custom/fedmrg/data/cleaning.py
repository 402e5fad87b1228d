"""Report cleaning compatible with R2Gen (``modules/tokenizers.py``), which PromptMRG copies unchanged.

Metrics in the R2Gen lineage are computed on text cleaned this way, so FedMRG reproduces the functions
character for character, quirks included (research notes, ``mrg.md`` section 2.5):

- The sentence cleaner's pattern ``[.,?;*!%^&_+():-\\[\\]{}]`` contains the *range* ``:-[`` (0x3A-0x5B): it deletes
  ``: ; < = > ? @``, ``A``-``Z`` and ``[``, and keeps the hyphen. Text is lower-cased first, so only the
  punctuation matters.
- ``"1. "`` is deleted everywhere, also inside tokens such as ``"T11. "``; ``" 2. "`` .. ``" 5. "`` become ``". "``.
- Sentences are split on ``". "`` only; empty sentences survive (R2Gen's ``!= []`` filter compares a string with
  a list and never removes anything), so ``" .  . "`` patterns can appear.
- The result is the sentences joined by ``" . "`` with ``" ."`` appended.

Pure functions of a string; no tokenizer or vocabulary is involved.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

# R2Gen's pattern, copied as written; see the module docstring for the range it contains.
_PUNCT = re.compile(r"[.,?;*!%^&_+():-\[\]{}]")
_NUMBERED = (
    ("1. ", ""),
    (". 2. ", ". "),
    (". 3. ", ". "),
    (". 4. ", ". "),
    (". 5. ", ". "),
    (" 2. ", ". "),
    (" 3. ", ". "),
    (" 4. ", ". "),
    (" 5. ", ". "),
)


def _clean_sentence(sentence: str) -> str:
    s = sentence.replace('"', "").replace("/", "").replace("\\", "").replace("'", "").strip().lower()
    return _PUNCT.sub("", s)


def _join(text: str) -> str:
    for old, new in _NUMBERED:
        text = text.replace(old, new)
    sentences = text.strip().lower().split(". ")
    return " . ".join(_clean_sentence(s) for s in sentences) + " ."


def _replace_n(text: str, old: str, new: str, times: int) -> str:
    # R2Gen chains str.replace a fixed number of times (not "until stable"); the count matters for long runs.
    for _ in range(times):
        text = text.replace(old, new)
    return text


def clean_report_iu(report: str) -> str:
    """R2Gen's ``clean_report_iu_xray``.

    >>> clean_report_iu("The heart is normal. Lungs clear.")
    'the heart is normal . lungs clear .'
    """
    return _join(_replace_n(report, "..", ".", 3))


def clean_report_mimic(report: str) -> str:
    """R2Gen's ``clean_report_mimic_cxr``: newlines to spaces, ``__`` collapsed 7 times, double spaces 6 times,
    ``..`` 8 times, then the same numbered-list rules and sentence cleaner as :func:`clean_report_iu`.

    >>> clean_report_mimic("FINDINGS:\\n1. No effusion.  2. Heart size normal.")
    'findings no effusion . heart size normal .'
    """
    text = report.replace("\n", " ")
    text = _replace_n(text, "__", "_", 7)
    text = _replace_n(text, "  ", " ", 6)
    text = _replace_n(text, "..", ".", 8)
    return _join(text)


CLEANERS: dict[str, Callable[[str], str]] = {"iu": clean_report_iu, "mimic": clean_report_mimic}


def clean_report(report: str, style: Literal["iu", "mimic"]) -> str:
    """Clean with the R2Gen rule for ``style`` (``"iu"`` for IU X-ray, ``"mimic"`` for MIMIC-CXR and others)."""
    if style not in CLEANERS:
        raise ValueError(f"`style` must be one of {sorted(CLEANERS)}, got {style!r}")
    return CLEANERS[style](report)
