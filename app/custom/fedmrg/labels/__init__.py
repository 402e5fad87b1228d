"""Rule-based labeler of the 14 CheXpert observations (no neural weights).

>>> from fedmrg.labels import label_report
>>> label_report("No pleural effusion. Mild cardiomegaly.")["Pleural Effusion"]
0

Values: 1 positive, 0 negative, -1 uncertain, ``None`` blank (CheXpert's convention).
"""

from __future__ import annotations

from fedmrg.labels.labeler import Mention, find_mentions, finding_sentence_spans, label_report, label_reports
from fedmrg.labels.states import labels_to_states, states_to_labels

__all__ = [
    "Mention",
    "find_mentions",
    "finding_sentence_spans",
    "label_report",
    "label_reports",
    "labels_to_states",
    "states_to_labels",
]
