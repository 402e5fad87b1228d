"""Rule-based CheXpert labeler: 14 observations, each positive / negative / uncertain / blank.

Pipeline per report (CheXpert's, with surface rules instead of dependency patterns):

1. :mod:`fedmrg.labels.text`: lower case, sentences, clauses.
2. Mentions (:mod:`fedmrg.labels.rules`): finding phrases minus unmentions, plus attribute phrases with a
   qualifier ("heart size is enlarged").
3. Each mention is classified inside its clause: uncertainty that wins over negation ("cannot exclude X",
   "no new X") -> -1; else negation ("no X", "X is not seen") -> 0; else uncertainty ("may represent X",
   "X versus Y") -> -1; else 1.
4. Per observation: positive if any mention is positive, else uncertain if any is uncertain, else negative;
   blank without mentions. "CHF" / "heart failure" (positive or uncertain) makes a blank Cardiomegaly uncertain.
   No Finding is 1 when nothing but Support Devices is positive or uncertain, counting findings outside the 14
   observations ("emphysema", "granuloma", ...), else blank. An empty report is all blank.

Values follow CheXpert's CSV convention: 1 positive, 0 negative, -1 uncertain, ``None`` blank.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fedmrg.labels import rules
from fedmrg.labels.text import SENTENCE_END, clauses
from fedmrg.observations import OBSERVATIONS

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1
NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"
#: Label given to mentions of findings outside the 14 observations (they only block No Finding).
OTHER = "other finding"

_WORD = re.compile(r"\S+")
_WORD_REST = re.compile(r"\w*")


@dataclass(frozen=True)
class Mention:
    """One mention found in a report.

    Args:
        observation: one of :data:`~fedmrg.observations.OBSERVATIONS`, or :data:`OTHER`.
        clause: the normalised clause it was found in.
        start: character offset of the mention (or of the attribute's qualifier) in ``clause``.
        end: end offset (exclusive).
        value: 1, 0 or -1.
    """

    observation: str
    clause: str
    start: int
    end: int
    value: int

    @property
    def text(self) -> str:
        return self.clause[self.start : self.end]


def classify(clause: str, start: int, end: int) -> int:
    """Value (1 / 0 / -1) of the mention at ``clause[start:end]`` from the cues around it in its clause.

    A prefix pattern ("consolidat") may end inside a word; the post-mention cues are read from the end of that word,
    so the word's remainder ("ion") is not counted as one of the words between the mention and its cue.
    """
    end = _WORD_REST.match(clause, end).end()
    before, after = clause[:start], clause[end:]
    if rules.UNCERTAIN_BEFORE_NEGATION_PRE.search(before) or rules.UNCERTAIN_BEFORE_NEGATION_POST.search(after):
        return UNCERTAIN
    if rules.NEGATION_PRE.search(before) or rules.NEGATION_POST.search(after):
        return NEGATIVE
    if rules.UNCERTAINTY_PRE.search(before) or rules.UNCERTAINTY_POST.search(after):
        return UNCERTAIN
    return POSITIVE


def _overlaps(span: tuple[int, int], spans: Iterable[tuple[int, int]]) -> bool:
    return any(span[0] < e and s < span[1] for s, e in spans)


def _blank_pseudo_negations(clause: str) -> str:
    # Same-length replacement keeps offsets; "#" is neither a word nor a cue.
    return rules.PSEUDO_NEGATION.sub(lambda m: "#" * len(m.group()), clause)


def _attribute_mentions(observation: str, attr: rules.Attribute, clause: str) -> list[Mention]:
    out = []
    veto = rules.ATTRIBUTE_UNMENTIONS.get(observation)
    vetoed = [m.span() for m in veto.finditer(clause)] if veto else []
    for subj in attr.subject.finditer(clause):
        if _overlaps(subj.span(), vetoed):
            continue
        # Qualifier window: up to `words_after` words after the subject, 3 before; never across a comma.
        after_end = clause.find(",", subj.end())
        after_end = len(clause) if after_end < 0 else after_end
        after_words = list(_WORD.finditer(clause, subj.end(), after_end))[: attr.words_after]
        win_after = (subj.end(), after_words[-1].end() if after_words else subj.end())
        before_start = clause.rfind(",", 0, subj.start()) + 1
        before_words = list(_WORD.finditer(clause, before_start, subj.start()))[-rules.ATTRIBUTE_WORDS_BEFORE :]
        win_before = (before_words[0].start() if before_words else subj.start(), subj.start())
        abnormal = [m for w in (win_before, win_after) for m in attr.abnormal.finditer(clause, *w)]
        normal = [m for w in (win_before, win_after) for m in attr.normal.finditer(clause, *w)]
        # "not enlarged" is both a normal phrase and a negated abnormal one; the abnormal reading decides.
        if abnormal:
            q = abnormal[0]
            out.append(Mention(observation, clause, q.start(), q.end(), classify(clause, q.start(), q.end())))
        elif normal:
            q = normal[0]
            out.append(Mention(observation, clause, q.start(), q.end(), NEGATIVE))
    return out


def find_mentions(text: str) -> list[Mention]:
    """Every mention in a raw report, classified, in reading order of clauses.

    Args:
        text: one free-text report (findings and / or impression); any case, any punctuation.

    Returns:
        Mentions of the 14 observations and of :data:`OTHER` findings (which only block No Finding).
    """
    out: list[Mention] = []
    for raw_clause in clauses(text):
        clause = _blank_pseudo_negations(raw_clause)
        for observation, pattern in rules.FINDINGS.items():
            veto = rules.UNMENTIONS.get(observation)
            vetoed = [m.span() for m in veto.finditer(clause)] if veto else []
            for m in pattern.finditer(clause):
                if not _overlaps(m.span(), vetoed):
                    out.append(Mention(observation, clause, m.start(), m.end(), classify(clause, *m.span())))
        for observation, attr in rules.ATTRIBUTES.items():
            out.extend(_attribute_mentions(observation, attr, clause))
        for m in rules.OTHER_FINDINGS.finditer(clause):
            out.append(Mention(OTHER, clause, m.start(), m.end(), classify(clause, *m.span())))
        for m in rules.HEART_FAILURE.finditer(clause):
            value = classify(clause, *m.span())
            if value != NEGATIVE:
                out.append(Mention("heart failure", clause, m.start(), m.end(), value))
    return out


def _aggregate(values: list[int]) -> int | None:
    if not values:
        return None
    if POSITIVE in values:
        return POSITIVE
    return UNCERTAIN if UNCERTAIN in values else NEGATIVE


def label_report(text: str) -> dict[str, int | None]:
    """Label one report.

    Args:
        text: the report; ``None``-like empty or whitespace-only text gives all blank.

    Returns:
        ``{observation: 1 | 0 | -1 | None}`` with keys :data:`~fedmrg.observations.OBSERVATIONS` in that order.
    """
    labels: dict[str, int | None] = dict.fromkeys(OBSERVATIONS)
    if not text or not text.strip():
        return labels
    mentions = find_mentions(text)
    by_obs: dict[str, list[int]] = {}
    for m in mentions:
        by_obs.setdefault(m.observation, []).append(m.value)
    for obs in OBSERVATIONS:
        if obs != NO_FINDING:
            labels[obs] = _aggregate(by_obs.get(obs, []))
    if labels["Cardiomegaly"] is None and by_obs.get("heart failure"):
        labels["Cardiomegaly"] = UNCERTAIN
    findings = [v for obs, v in labels.items() if obs not in (NO_FINDING, SUPPORT_DEVICES)]
    findings += by_obs.get(OTHER, [])
    labels[NO_FINDING] = None if any(v in (POSITIVE, UNCERTAIN) for v in findings) else POSITIVE
    return labels


def label_reports(texts: Sequence[str], *, progress: bool = False) -> list[dict[str, int | None]]:
    """Label many reports; see :func:`label_report`. ``progress`` shows a tqdm bar on stderr."""
    if progress:
        from tqdm import tqdm

        texts = tqdm(texts, desc="labeling", unit="report")
    return [label_report(t) for t in texts]


@functools.lru_cache(maxsize=16384)
def finding_sentence_spans(text: str) -> tuple[tuple[int, int], ...]:
    """Character spans ``(start, end)`` in ``text`` of the sentences that state a finding: a positive or uncertain
    mention of one of the 14 observations other than No Finding ("mild cardiomegaly.", "sternotomy wires are
    intact."), as :func:`label_report` reads them sentence by sentence. Negated ("no effusion.") and normal sentences
    are not spans. Cached: training labels the same reports every epoch.
    """
    spans: list[tuple[int, int]] = []
    start = 0
    for end in [m.start() for m in SENTENCE_END.finditer(text)] + [len(text)]:
        piece = text[start:end]
        if piece.strip() and any(
            m.observation in OBSERVATIONS and m.observation != NO_FINDING and m.value != NEGATIVE
            for m in find_mentions(piece)
        ):
            spans.append((start, end))
        start = end + 1
    return tuple(spans)
