from __future__ import annotations

import pytest

from fedmrg.errors import DataError
from fedmrg.metrics.baselines import most_frequent_report


def test_counts_after_normalisation_and_returns_first_spelling():
    reports = ["The heart is normal.", "No effusion.", "the heart is normal .", "No effusion.", "THE HEART IS NORMAL."]
    assert most_frequent_report(reports) == "The heart is normal."


def test_tie_goes_to_first_seen_and_empty_ignored():
    assert most_frequent_report(["", "b.", "a.", "a.", "b."]) == "b."
    with pytest.raises(DataError, match="no non-empty report"):
        most_frequent_report(["", "  "])
