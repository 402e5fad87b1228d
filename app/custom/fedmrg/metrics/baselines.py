"""Trivial report baselines that any trained model must beat."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from fedmrg.errors import DataError
from fedmrg.metrics.normalize import DEFAULT_NORMALIZE, apply_normalizer, resolve_normalizer


def most_frequent_report(reports: Iterable[str]) -> str:
    """The most frequent report after normalisation (R2Gen cleaning), returned as first written.

    Ties go to the report seen first, so the result does not depend on hash order.

    Raises:
        DataError: no non-empty report was given.
    """
    normalize_fn, _ = resolve_normalizer(DEFAULT_NORMALIZE)
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    for text in reports:
        if not text.strip():
            continue
        key = apply_normalizer(normalize_fn, text)
        counts[key] += 1
        first.setdefault(key, text)
    if not counts:
        raise DataError("most_frequent_report: no non-empty report to choose from")
    order = {key: i for i, key in enumerate(first)}
    best = max(counts, key=lambda key: (counts[key], -order[key]))
    return first[best]
