"""The 14 CheXpert observations and the four diagnosis states used throughout FedMRG.

CheXpert's CSV convention for a label is ``1`` positive, ``0`` negative, ``-1`` uncertain and empty
(``None``) blank. Inside models the same information is a *state index* in ``0..3`` matching the prompt
tokens ``[BLA] [POS] [NEG] [UNC]``.
"""

from __future__ import annotations

from enum import IntEnum

OBSERVATIONS: tuple[str, ...] = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
    "No Finding",
)
NUM_OBSERVATIONS = len(OBSERVATIONS)


class State(IntEnum):
    """Diagnosis state of one observation; the value is the class index of the diagnosis head."""

    BLANK = 0
    POSITIVE = 1
    NEGATIVE = 2
    UNCERTAIN = 3


STATE_TOKENS: tuple[str, ...] = ("[BLA]", "[POS]", "[NEG]", "[UNC]")

# CheXpert CSV value (None = blank) <-> State
_CSV_TO_STATE = {None: State.BLANK, 1: State.POSITIVE, 0: State.NEGATIVE, -1: State.UNCERTAIN}
_STATE_TO_CSV = {v: k for k, v in _CSV_TO_STATE.items()}


def csv_to_state(value: int | None) -> State:
    """Map a CheXpert CSV label (1, 0, -1 or None) to a :class:`State`."""
    try:
        return _CSV_TO_STATE[value]
    except KeyError:
        raise ValueError(f"CheXpert label must be 1, 0, -1 or None, got {value!r}") from None


def state_to_csv(state: int) -> int | None:
    """Map a :class:`State` (or its int value) to CheXpert's CSV label (1, 0, -1 or None)."""
    return _STATE_TO_CSV[State(state)]
