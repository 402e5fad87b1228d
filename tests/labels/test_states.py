"""Label dicts <-> diagnosis-head state indices."""

from __future__ import annotations

import numpy as np
import pytest

from fedmrg.labels import label_reports, labels_to_states, states_to_labels
from fedmrg.observations import OBSERVATIONS, State


def test_labels_to_states_values_shape_dtype() -> None:
    labels = label_reports(["No pleural effusion. Mild cardiomegaly. Possible pneumonia.", ""])
    states = labels_to_states(labels)
    assert states.shape == (2, len(OBSERVATIONS)) and states.dtype == np.int64
    col = {o: i for i, o in enumerate(OBSERVATIONS)}
    assert states[0, col["Pleural Effusion"]] == State.NEGATIVE
    assert states[0, col["Cardiomegaly"]] == State.POSITIVE
    assert states[0, col["Pneumonia"]] == State.UNCERTAIN
    assert states[0, col["Fracture"]] == State.BLANK
    assert (states[1] == State.BLANK).all()


def test_round_trip_and_missing_keys_are_blank() -> None:
    labels = [{"Cardiomegaly": 1, "Edema": -1}, dict.fromkeys(OBSERVATIONS, 0)]
    back = states_to_labels(labels_to_states(labels))
    assert back[0]["Cardiomegaly"] == 1 and back[0]["Edema"] == -1 and back[0]["Fracture"] is None
    assert back[1] == dict.fromkeys(OBSERVATIONS, 0)


def test_empty_input() -> None:
    assert labels_to_states([]).shape == (0, len(OBSERVATIONS))


@pytest.mark.parametrize("bad", [{"Cardiomegaly": 2}, {"Heart Failure": 1}])
def test_bad_labels_raise(bad: dict) -> None:
    with pytest.raises(ValueError):
        labels_to_states([bad])


def test_states_shape_checked() -> None:
    with pytest.raises(ValueError, match="shape"):
        states_to_labels(np.zeros((2, 3), dtype=np.int64))
