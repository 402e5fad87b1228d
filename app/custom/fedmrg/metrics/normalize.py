"""Text normalisation applied to predicted and reference reports before they are scored or labelled.

pycocoevalcap's BLEU, ROUGE-L, CIDEr and METEOR scorers split on whitespace and do no tokenisation of their
own, so punctuation must already stand apart. The report-generation literature (R2Gen, PromptMRG, R2GenGPT)
scores *R2Gen-cleaned* text: lower-case, sentences joined by ``" . "``, other punctuation deleted, e.g.
``"the heart is normal . lungs clear ."``. The choices, by name:

- ``"r2gen-mimic"`` (default): :func:`fedmrg.data.cleaning.clean_report_mimic`, R2Gen's
  ``clean_report_mimic_cxr`` (PromptMRG cleans every dataset with it). Handles newlines and long runs of dots.
- ``"r2gen-iu"``: :func:`fedmrg.data.cleaning.clean_report_iu`, R2Gen's ``clean_report_iu_xray``. On the 2,837
  IU X-ray reports with findings in the shared data, both give the same text once whitespace is collapsed.
- ``"basic"``: :func:`normalize_report` below, a gentler rule (punctuation becomes a space instead of vanishing,
  list numbers are kept, empty sentences are dropped).
- ``"none"``: texts as given.

Whatever the choice, whitespace is then collapsed to single spaces, as R2Gen's references are after its
tokenizer's decode (pycocoevalcap's ROUGE splits on ``" "`` and would otherwise count empty tokens).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

from fedmrg.data.cleaning import clean_report_iu, clean_report_mimic

Normalizer = Callable[[str], str]
NormalizeName = Literal["r2gen-mimic", "r2gen-iu", "basic", "none"]
NORMALIZE_NAMES: tuple[str, ...] = ("r2gen-mimic", "r2gen-iu", "basic", "none")
DEFAULT_NORMALIZE: NormalizeName = "r2gen-mimic"

#: Punctuation replaced by a space (everything R2Gen deletes except the sentence full stop and ``-``).
_DROP = re.compile(r"""["'/\\,;:?!()\[\]{}*%^&_+<>=@#$|~`]""")
#: One or more full stops that end a sentence (followed by whitespace or the end), not a decimal point.
_SENTENCE_END = re.compile(r"\.+(?=\s|$)")

_COLLAPSE = "; whitespace then collapsed to single spaces"
_DESCRIPTIONS: dict[str, str] = {
    "r2gen-mimic": "r2gen-mimic: fedmrg.data.cleaning.clean_report_mimic, R2Gen's clean_report_mimic_cxr "
    "character for character (lower-case, list numbers removed, sentences split on '. ' and joined by ' . ', "
    "punctuation deleted by R2Gen's regex including its ':-[' range, ' .' appended)" + _COLLAPSE,
    "r2gen-iu": "r2gen-iu: fedmrg.data.cleaning.clean_report_iu, R2Gen's clean_report_iu_xray character for "
    "character" + _COLLAPSE,
    "basic": "basic: fedmrg.metrics.normalize.normalize_report (lower-case; punctuation other than '.' and '-' "
    "replaced by a space; a sentence-final '.' split off as its own token; repeated '.' tokens merged)" + _COLLAPSE,
    "none": "none: texts used as given" + _COLLAPSE,
}


def normalize_report(text: str) -> str:
    """The ``"basic"`` normaliser: a lower-case, space-tokenised report for the pycocoevalcap scorers.

    Idempotent; on R2Gen-cleaned text it changes only R2Gen's empty sentences (``". ."`` becomes ``"."``).

    Args:
        text: a report, raw (``"The heart is normal. Lungs: clear."``) or already cleaned.

    Returns:
        Tokens joined by single spaces, e.g. ``"the heart is normal . lungs clear ."``; ``""`` for blank input.
    """
    text = _DROP.sub(" ", text.lower())
    text = _SENTENCE_END.sub(" . ", text)
    tokens: list[str] = []
    for tok in text.split():
        if tok == "." and (not tokens or tokens[-1] == "."):
            continue  # a sentence of nothing: ". ." or a leading "."
        tokens.append(tok)
    return " ".join(tokens)


_BY_NAME: dict[str, Normalizer | None] = {
    "r2gen-mimic": clean_report_mimic,
    "r2gen-iu": clean_report_iu,
    "basic": normalize_report,
    "none": None,
}


def resolve_normalizer(normalize: NormalizeName | Normalizer) -> tuple[Normalizer | None, str]:
    """``(function or None, description for the conventions block)`` for a name in :data:`NORMALIZE_NAMES` or a
    callable ``str -> str``.

    Raises:
        ValueError: an unknown name.
    """
    if callable(normalize):
        name = f"{getattr(normalize, '__module__', '?')}.{getattr(normalize, '__qualname__', repr(normalize))}"
        return normalize, f"custom: {name}" + _COLLAPSE
    if normalize not in _BY_NAME:
        raise ValueError(f"`normalize` must be one of {NORMALIZE_NAMES} or a callable, got {normalize!r}")
    return _BY_NAME[normalize], _DESCRIPTIONS[normalize]


def apply_normalizer(fn: Normalizer | None, text: str) -> str:
    """``fn(text)`` (or ``text`` when ``fn`` is None) with whitespace collapsed to single spaces."""
    return " ".join((fn(text) if fn is not None else text).split())


def is_empty(normalized: str) -> bool:
    """True when a normalised report holds no word, only ``"."`` tokens (R2Gen's cleaner turns ``""`` into
    ``" ."``)."""
    return all(tok == "." for tok in normalized.split())
