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

:func:`remove_deid_marks` is not part of R2Gen: it deletes IU X-ray's de-identification marks (``XXXX``, words an
automatic de-identifier removed, most of them anatomical words such as "bones" or "vasculature") from report text
so that a model never learns to write them; ``fedmrg data prepare`` applies it to the reports it writes unless
``--keep-deid-marks`` is given.
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


# ----------------------------------------------------------------------------------------------------------------------
# de-identification marks

_MARK = re.compile(r"x{4,}", re.I)
#: ``x-XXXX`` is always "x-ray" in IU X-ray ("chest x-XXXX", "Negative chest x-XXXX."): the one mark restored.
_XRAY = re.compile(r"\b([xX])-x{4,}\b", re.I)
_TOKEN_WITH_MARK = re.compile(r"\S*x{4,}\S*", re.I)
_LEAD = re.compile(r"^[(\[{\"']*")
_TRAIL = re.compile(r"[)\]}\"'.,;:!?]*$")
#: Parts of a hyphenated / slashed compound left meaningless once its marked part is gone ("XXXX-of-view").
_CONNECTORS = frozenset({"a", "an", "of", "the", "and", "or", "to", "in"})


def _strip_marked_token(token: str) -> str:
    lead = _LEAD.match(token).group(0)  # type: ignore[union-attr]
    rest = token[len(lead) :]
    trail = _TRAIL.search(rest).group(0)  # type: ignore[union-attr]
    core = rest[: len(rest) - len(trail)]
    pieces = re.split(r"([-/])", core)  # [part, sep, part, sep, part ...]
    kept: list[tuple[str, str]] = []  # (separator before, part)
    for i in range(0, len(pieces), 2):
        part = re.sub(r"x{4,}(?:'[a-z]*)?", "", pieces[i], flags=re.I)
        if part:
            kept.append((pieces[i - 1] if i else "", part))
    while kept and kept[0][1].lower() in _CONNECTORS:
        kept.pop(0)
    while kept and kept[-1][1].lower() in _CONNECTORS:
        kept.pop()
    core = "".join((sep if j else "") + part for j, (sep, part) in enumerate(kept))
    if not core:
        return trail.lstrip(")]}\"'")
    return lead + core + trail


def remove_deid_marks(text: str) -> str:
    """Delete de-identification marks (``XXXX``, any case, 4 or more x) and repair the text around them.

    ``x-XXXX`` becomes ``x-ray``; every other marked word is deleted (a mark inside a compound deletes that part:
    ``XXXX-filled`` -> ``filled``); then empty brackets, spaces before punctuation, repeated commas and sentences
    left empty are removed. Words are never invented: "The XXXX are intact." becomes "The are intact.". Newlines
    are kept. Idempotent; text without marks is returned unchanged.

    >>> remove_deid_marks("No XXXX of pleural effusion. XXXX. Negative chest x-XXXX.")
    'No of pleural effusion. Negative chest x-ray.'
    >>> remove_deid_marks("Heart XXXX, mediastinum, XXXX, and lungs are normal.")
    'Heart, mediastinum, and lungs are normal.'
    """
    if not _MARK.search(text):
        return text
    text = _XRAY.sub(lambda m: f"{m.group(1)}-ray", text)
    text = _TOKEN_WITH_MARK.sub(lambda m: _strip_marked_token(m.group(0)), text)
    text = re.sub(r"[(\[{]\s*[)\]}]", "", text)  # "( )" left by "(XXXX)"
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r"[ \t]+(?=[.,;:!?)\]}])", "", text)  # "pulmonary ." -> "pulmonary."
    text = re.sub(r",(?:\s*,)+", ",", text)  # ", ," -> ","
    text = re.sub(r",\s*(?=[.;:!?])", "", text)  # ",." -> "."
    text = re.sub(r"([.;:!?])(?:\s*[.,;:](?![0-9]))+", r"\1", text)  # "clear. . Heart" / "normal.." / ". , and"
    text = re.sub(r"^\s*[.,;:]+\s*", "", text)  # a report that began with a mark
    text = re.sub(r"^[ \t]+|[ \t]+$", "", text, flags=re.M)
    return text
