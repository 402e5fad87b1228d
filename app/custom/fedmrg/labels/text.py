"""Report normalisation, sentence splitting and clause splitting for the rule-based labeler.

Follows the CheXpert labeler's loader conventions: lower case, ``and/or`` -> ``or``, ``x/y`` -> ``x or y``,
then sentences. Negation and uncertainty never cross a sentence or a clause boundary (:data:`CLAUSE_BREAK`).
IU X-ray's de-identification token ``XXXX`` is kept as the neutral word ``xxxx``: it stands for words that were
removed ("no XXXX of effusion" = "no signs of effusion"), so it must not end a negation's scope.
"""

from __future__ import annotations

import re

_WS = re.compile(r"\s+")
_AND_OR = re.compile(r"\band\s*/\s*or\b")
_SLASH = re.compile(r"(?<=[a-z])\s*/\s*(?=[a-z])")
_HYPHEN_BREAK = re.compile(r"(?<=[a-z])-\s+(?=[a-z])")  # "air- space" line-wrap artefacts

#: A sentence ends at ".", "!" or "?" unless the period is a decimal point ("1.5 cm"), and at line breaks.
#: Numbered list markers ("1." / "2)") become their own tiny fragments, which hold no mention.
SENTENCE_END = re.compile(r"[.!?](?!\d)|\n+|\b\d+\)")

#: Words and marks that end a clause: a negation or uncertainty cue never reaches past them. ``and`` ends a clause
#: only when a new subject or finding starts after it ("no effusion and mild cardiomegaly"), so that coordinated
#: negations ("no edema and effusion") still carry.
CLAUSE_BREAK = re.compile(
    r";|:|\b(?:but|however|although|though|except|aside from|apart from|other than|otherwise|whereas|while|"
    r"which|yet|nevertheless|since|because|instead)\b|"
    r"(?<!consistent )(?<!compatible )(?<!associated )(?<!keeping )\bwith\b|"
    r",?\s+and\s+(?=(?:there|the|a|an|this|these|it|is|are|was|were|has|have|mild|mildly|moderate|moderately|"
    r"severe|small|large|tiny|minimal|stable|unchanged|new|persistent|increased|decreased|enlarged|"
    r"interval|some|again|slight|possible|probable|likely)\b)|"
    r",\s*(?=(?:the|there|this|it)\b)"
)


def normalize(text: str) -> str:
    """Lower-case ``text`` and rewrite slashes and line-wrap hyphens; sentence marks and newlines are kept."""
    t = text.lower().replace("\r", "\n")
    t = _AND_OR.sub("or", t)
    t = _SLASH.sub(" or ", t)
    t = _HYPHEN_BREAK.sub("-", t)
    return t


def split_sentences(text: str) -> list[str]:
    """Split normalised text into sentences with single spaces; empty pieces are dropped."""
    out = []
    for piece in SENTENCE_END.split(text):
        s = _WS.sub(" ", piece).strip(" ,")
        if s:
            out.append(s)
    return out


def split_clauses(sentence: str) -> list[str]:
    """Split one sentence at :data:`CLAUSE_BREAK`; the break words themselves are dropped."""
    return [c.strip(" ,") for c in CLAUSE_BREAK.split(sentence) if c and c.strip(" ,")]


def clauses(text: str) -> list[str]:
    """All clauses of a raw report, in order: ``normalize`` -> ``split_sentences`` -> ``split_clauses``."""
    return [c for s in split_sentences(normalize(text)) for c in split_clauses(s)]
