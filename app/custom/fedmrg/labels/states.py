"""Conversion between CheXpert label dicts and diagnosis-head state indices."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedmrg.observations import NUM_OBSERVATIONS, OBSERVATIONS, csv_to_state, state_to_csv


def labels_to_states(labels: Sequence[Mapping[str, int | None]]) -> np.ndarray:
    """Turn label dicts into state indices for the diagnosis head.

    Args:
        labels: N dicts ``{observation: 1 | 0 | -1 | None}``; a missing key counts as blank.

    Returns:
        ``(N, 14)`` int64 array of :class:`~fedmrg.observations.State` values (0 blank, 1 positive, 2 negative,
        3 uncertain), columns in :data:`~fedmrg.observations.OBSERVATIONS` order.

    Raises:
        ValueError: a key outside the 14 observations, or a value other than 1, 0, -1, None.
    """
    out = np.zeros((len(labels), NUM_OBSERVATIONS), dtype=np.int64)
    for i, row in enumerate(labels):
        unknown = set(row) - set(OBSERVATIONS)
        if unknown:
            raise ValueError(f"labels[{i}] has unknown observation(s) {sorted(unknown)}; expected {OBSERVATIONS}")
        for j, obs in enumerate(OBSERVATIONS):
            out[i, j] = csv_to_state(row.get(obs))
    return out


def states_to_labels(states: np.ndarray) -> list[dict[str, int | None]]:
    """Inverse of :func:`labels_to_states`: ``(N, 14)`` state indices -> N label dicts."""
    states = np.asarray(states)
    if states.ndim != 2 or states.shape[1] != NUM_OBSERVATIONS:
        raise ValueError(f"states must have shape (N, {NUM_OBSERVATIONS}), got {states.shape}")
    return [{obs: state_to_csv(int(v)) for obs, v in zip(OBSERVATIONS, row, strict=True)} for row in states]
